"""Fault drills: what a nightly run meets unattended, each on loopback only."""

import io
import ipaddress
import json
import os
import re
import stat
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import boto3
import psutil
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
import yaml

from flows.cli import main
from flows.label import label_collection
from schemas import RunLayout, parse_job
from tests.support.faults import KINDS, FaultProxy
from tests.support.helpers import cli, flow_job, plan_for, run_rows, scene_bytes
from workers import runs
from workers.labelling.labeler import Labeler
from workers.outputs import report
from workers.storage import LocalStore, ObjectInfo

TIMING = ["read_ms", "decode_ms", "segment_ms", "score_ms"]


def _s3_table(s3, bucket: str, prefix: str) -> pa.Table:
    keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", []))
    t = pa.concat_tables([pq.read_table(io.BytesIO(s3.get_object(Bucket=bucket, Key=k)["Body"].read())) for k in keys])
    return t.drop_columns([c for c in [*TIMING, "run_id"] if c in t.column_names])


def _upload(s3, bucket: str, prefix: str, n: int) -> list[str]:
    keys = [f"{prefix}/img-{i:02d}.jpg" for i in range(n)]
    for i, key in enumerate(keys):
        s3.put_object(Bucket=bucket, Key=key, Body=scene_bytes(300 + i))
    return keys


def test_s3_faults_are_ridden_out_and_change_nothing(s3_endpoint, bucket, prefect_harness):
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    keys = _upload(s3, bucket, "src", 10)
    compute = {"shard_size": 3, "num_actors": 1, "cpus_per_actor": 1, "batch_size": 2}
    with FaultProxy(s3_endpoint, share=0.2, budget=80, seed=11) as proxy:
        storage = {"endpoint_url": proxy.url, "max_attempts": 10}
        job = flow_job(f"s3://{bucket}/src", f"s3://{bucket}/faulty", storage=storage, compute=compute)
        summary = label_collection(job=job, run_id="faulty")
    assert summary["state"] == "committed" and summary["counts"]["labelled"] == 10
    print(f"faults injected: {dict(proxy.injected)} in {proxy.requests} requests")
    assert set(proxy.injected) == set(KINDS) and sum(proxy.injected.values()) >= 30, proxy.injected
    clean = flow_job(
        f"s3://{bucket}/src", f"s3://{bucket}/clean", storage={"endpoint_url": s3_endpoint}, compute=compute
    )
    label_collection(job=clean, run_id="clean")
    for name in ("images", "masks"):
        faulty, direct = (
            _s3_table(s3, bucket, f"faulty/runs/faulty/{name}/"),
            _s3_table(s3, bucket, f"clean/runs/clean/{name}/"),
        )
        assert faulty.num_rows == direct.num_rows > 0
        assert faulty.equals(direct), name  # the same rows as a run that met no fault
    images = _s3_table(s3, bucket, "faulty/runs/faulty/images/")
    assert sorted(images["key"].to_pylist()) == sorted(k.removeprefix("src/") for k in keys)  # each object once


def test_incremental_runs_label_a_copied_source_and_objects_without_etags(s3_endpoint, bucket, prefect_harness):
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    keys = _upload(s3, bucket, "a", 5)
    storage = {"endpoint_url": s3_endpoint}
    first = label_collection(job=flow_job(f"s3://{bucket}/a", f"s3://{bucket}/out", storage=storage), run_id="d1")
    assert first["counts"]["labelled"] == 5
    for key in keys:  # a replica of the bucket's prefix: same keys below it, same ETags
        s3.copy_object(Bucket=bucket, Key="b/" + key[2:], CopySource={"Bucket": bucket, "Key": key})
        assert (
            s3.head_object(Bucket=bucket, Key="b/" + key[2:])["ETag"] == s3.head_object(Bucket=bucket, Key=key)["ETag"]
        )
    copy = flow_job(f"s3://{bucket}/b", f"s3://{bucket}/out", storage=storage)
    second = label_collection(job=copy, run_id="d2", incremental=True)
    assert (second["counts"]["objects"], second["counts"]["skipped"]) == (5, 0)  # another source: all new
    again = label_collection(job=copy, run_id="d3", incremental=True)
    assert (again["counts"]["objects"], again["counts"]["skipped"]) == (0, 5)


class NoETags(LocalStore):
    """A store whose listing carries no ETags (some S3-compatible stores, some gateways)."""

    def list(self, prefix: str = "", skipped=None, start_after=None):
        for o in super().list(prefix, skipped, start_after):
            yield ObjectInfo(o.key, o.size, None)


def test_objects_listed_without_an_etag_are_always_labelled(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(4):
        (src / f"{i}.jpg").write_bytes(scene_bytes(i))
    job = parse_job({"source": {"uri": str(src)}, "output": str(tmp_path / "out")}, environ={})
    plan_for(job, "first")
    Labeler(job).label_shard("first", 0)
    runs.commit_run(job, LocalStore(tmp_path / "out"), RunLayout("first"), "test", datetime.now(UTC), report.at_commit)
    assert plan_for(job, "again", incremental=True).objects == 0  # unchanged, with ETags: skipped
    assert plan_for(job, "no-etags", incremental=True, source=NoETags(src)).objects == 4


def _job_file(tmp_path: Path, name: str, src: Path, prompts: list[str], **compute) -> Path:
    job = flow_job(str(src), str(tmp_path / "out"), prompts=prompts, compute={"shard_size": 2, **compute})
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


def _scenes(folder: Path, n: int) -> Path:
    folder.mkdir()
    for i in range(n):
        (folder / f"{i:02d}.jpg").write_bytes(scene_bytes(400 + i, 240, 320))
    return folder


def test_resuming_with_another_job_is_refused_and_with_the_same_job_completes(tmp_path, prefect_harness, capsys):
    src = _scenes(tmp_path / "src", 4)
    red, blue = _job_file(tmp_path, "red", src, ["red"]), _job_file(tmp_path, "blue", src, ["blue", "green"])
    plan_for(parse_job(yaml.safe_load(red.read_text()), environ={}), "r1")
    before = sorted(p.relative_to(tmp_path) for p in (tmp_path / "out").rglob("*"))
    t0 = time.perf_counter()
    assert main(["run", str(blue), "--run-id", "r1"]) == 2
    refused_s = time.perf_counter() - t0
    err = capsys.readouterr().err.strip()
    assert re.fullmatch(
        r"error: run r1 was planned by another job \(1 setting\(s\) differ: prompts: planned \['red'\], "
        r"now \['blue', 'green'\]\); use a new run id for this job, or resume with the job that planned it",
        err,
    ), err
    assert refused_s < 30 and sorted(p.relative_to(tmp_path) for p in (tmp_path / "out").rglob("*")) == before
    assert main(["run", str(red), "--run-id", "r1"]) == 0
    manifest = json.loads((tmp_path / "out/runs/r1/manifest.json").read_text())
    assert manifest["prompts"] == ["red"] and manifest["summary"]["counts"]["labelled"] == 4


def test_a_run_stopped_mid_listing_and_mid_labelling_resumes_to_the_rows_of_an_uninterrupted_run(tmp_path):
    src = _scenes(tmp_path / "src", 10)
    job = _job_file(tmp_path, "job", src, ["red"])  # shards of 2
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_API", "RAY_"))}  # own servers
    stopped = subprocess.run([sys.executable, "-m", "tests.support.stopped_listing", str(job), "stopped"], env=env,
                             capture_output=True, text=True, timeout=600)  # fmt: skip
    assert stopped.returncode == 4 and "SlowDown after 5 attempts" in stopped.stderr, stopped.stderr[-2000:]
    out = LocalStore(tmp_path / "out")
    layout = RunLayout("stopped")
    assert out.head(layout.plan) is None and out.head(layout.planning) is not None  # stopped mid-listing
    done = sorted(o.key for o in out.list(layout.done_prefix))
    assert done == [layout.done(i) for i in range(3)]  # the shards the listing had filled were labelled
    code, resumed, _ = cli("run", job, "--run-id", "stopped")
    assert code == 0 and resumed["state"] == "committed" and resumed["labelled_now"] == 4
    assert resumed["shards_planned"] == 5
    code, whole, _ = cli("run", job, "--run-id", "whole")
    assert code == 0 and whole["counts"]["labelled"] == resumed["counts"]["labelled"] == 10

    def rows(run_id: str) -> list[list[dict]]:
        drop = {*TIMING, "run_id"}
        return [[{k: v for k, v in r.items() if k not in drop} for r in t] for t in run_rows(out, run_id)]

    assert rows("stopped") == rows("whole")


def _cli(args: list[str], log: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_API", "RAY_"))}  # own servers
    with open(log, "wb") as f:
        return subprocess.Popen([sys.executable, "-m", "flows.cli", *args], env=env, stdout=f, stderr=subprocess.STDOUT)


def test_two_flows_started_at_once_with_one_run_id(tmp_path):
    src = _scenes(tmp_path / "src", 6)
    jobs = {
        "red": _job_file(tmp_path, "red", src, ["red"]),
        "blue": _job_file(tmp_path, "blue", src, ["blue", "green"]),
    }
    procs = {
        name: _cli(["run", str(path), "--run-id", "same"], tmp_path / f"{name}.log") for name, path in jobs.items()
    }
    codes = {name: p.wait(timeout=600) for name, p in procs.items()}
    winners = [name for name, code in codes.items() if code == 0]
    assert len(winners) == 1, codes
    loser = next(name for name in codes if name not in winners)
    log = (tmp_path / f"{loser}.log").read_text()
    # Refused while the winner held the run (5), or after it had planned it with its job (2).
    refusal = {5: "is being worked on by another flow", 2: "was planned by another job"}
    assert codes[loser] in refusal and f"error: run same {refusal[codes[loser]]}" in log, log
    assert "Traceback" not in log
    prompts = ["red"] if winners == ["red"] else ["blue", "green"]
    manifest = json.loads((tmp_path / "out/runs/same/manifest.json").read_text())
    assert manifest["prompts"] == prompts
    masks = ds.dataset(str(tmp_path / "out/runs/same/masks"), format="parquet").to_table()
    assert {len(v) for v in masks["clip_cosine"].to_pylist() if v is not None} == {len(prompts)}  # one job's rows


def _loopback(ip: str) -> bool:
    addr = ipaddress.ip_address(ip)
    mapped = getattr(addr, "ipv4_mapped", None)
    return addr.is_loopback or (mapped is not None and mapped.is_loopback)


def test_a_healthy_run_listens_on_loopback_only_and_prints_no_warnings(tmp_path):
    src = _scenes(tmp_path / "src", 12)
    job = _job_file(tmp_path, "job", src, ["red"])
    log = tmp_path / "run.log"
    proc = _cli(["run", str(job), "--run-id", "sockets"], log)
    listening: set[tuple[str, str, int]] = set()
    tokens: set[str] = set()
    names: set[str] = set()
    root = psutil.Process(proc.pid)
    while proc.poll() is None:
        try:
            tree = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            break
        for p in tree:
            try:
                names.add(p.name())
                for c in p.net_connections(kind="inet"):
                    if c.status == psutil.CONN_LISTEN:
                        listening.add((p.name(), c.laddr.ip, c.laddr.port))
                if token := p.environ().get("RAY_AUTH_TOKEN_PATH"):
                    tokens.add(token)
                    folder = Path(token).parent
                    assert stat.S_IMODE(os.stat(token).st_mode) == 0o600
                    assert stat.S_IMODE(os.stat(folder).st_mode) == 0o700
            except (psutil.NoSuchProcess, psutil.AccessDenied, FileNotFoundError):
                continue
        time.sleep(0.2)
    output = log.read_text()
    assert proc.returncode == 0, output
    assert {"gcs_server", "raylet"} <= names, names  # the samples saw the Ray cluster
    assert len(listening) >= 8, listening  # GCS, raylet, workers, agents, the Prefect server
    assert [s for s in listening if not _loopback(s[1])] == []
    assert len(tokens) == 1 and not Path(next(iter(tokens))).parent.exists()  # its private folder is gone
    noisy = [line for line in output.splitlines() if re.search(r"\b(ERROR|WARNING|Traceback)\b", line)]
    assert noisy == [], "\n".join(noisy)


def test_a_source_with_nothing_to_label_is_refused_before_anything_is_written(tmp_path):
    from schemas.errors import EmptySourceError, JobError

    src = tmp_path / "src"
    src.mkdir()
    (src / "notes.txt").write_text("not an image")
    job = parse_job({"source": {"uri": str(src)}, "output": str(tmp_path / "out")}, environ={})
    with pytest.raises(EmptySourceError) as e:
        plan_for(job, "empty")
    assert isinstance(e.value, JobError)  # exit 2 in the CLI
    assert str(e.value) == (
        f"source {src.as_uri()} holds no object this job labels (extensions .jpg, .jpeg, .png, .webp, .bmp, "
        ".tif, .tiff, .gif); check source.uri and the filters"
    )
    assert not (tmp_path / "out/runs/empty").exists()


def test_a_job_asking_for_gpus_the_local_cluster_lacks_fails_in_seconds(tmp_path, capsys):
    job = _job_file(tmp_path, "gpu", _scenes(tmp_path / "src", 2), ["red"], gpus_per_actor=1)
    t0 = time.monotonic()
    assert main(["run", str(job)]) == 4
    assert time.monotonic() - t0 < 30
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and re.fullmatch(
        r"error: compute\.gpus_per_actor is 1 and compute\.cpus_per_actor \d+, but the local Ray cluster has 1 node: "
        r"127\.0\.0\.1 with \d+ CPUs and 0 GPUs; set compute\.gpus_per_actor: 0 to label on the CPU, or run on a "
        r"cluster with such nodes \(--ray-address\)",
        err[0],
    ), err


def _owned_by(pid: int) -> tuple[list[int], list[Path]]:
    """(processes, folders) a CLI run with this pid started, by the tag workers.ray.reaper gives them."""
    from workers.ray.reaper import OWNER_ENV, OWNER_FILE

    prefix = f"{OWNER_ENV}={pid}.".encode()
    procs = []
    for p in psutil.process_iter():
        try:
            env = Path(f"/proc/{p.pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(e.startswith(prefix) for e in env):
            procs.append(p.pid)
    folders = [f for f in Path("/tmp").glob("fsl-*") if (f / OWNER_FILE).is_file() and
               (f / OWNER_FILE).read_text().startswith(f"{pid}.")]  # fmt: skip
    return procs, folders


def test_a_killed_run_leaves_no_server_process_or_token_folder_behind(tmp_path):
    job = _job_file(tmp_path, "kill", _scenes(tmp_path / "src", 12), ["red"], shard_size=1)
    cli = _cli(["run", str(job), "--run-id", "killed"], tmp_path / "kill.log")
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and not list((tmp_path / "out/runs/killed/done").glob("*.json")):
        time.sleep(0.2)  # labelling has begun: Prefect's server, Ray and an actor are all up
    procs, folders = _owned_by(cli.pid)
    names = {psutil.Process(p).name() for p in procs if psutil.pid_exists(p)}
    assert len(procs) >= 4 and folders, (names, folders)  # the server, gcs, raylet, workers, agents
    cli.kill()  # SIGKILL: no finally block of the CLI runs
    cli.wait()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(_owned_by(cli.pid)):
        time.sleep(0.5)
    assert _owned_by(cli.pid) == ([], []), names
    # The run resumes as if it had never been interrupted.
    assert main(["run", str(job), "--run-id", "killed"]) == 0
