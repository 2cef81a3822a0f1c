"""The Prefect flow end to end: loopback S3, local Ray, Prefect's test harness; resume and incremental runs."""

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import boto3
import numpy as np
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
import yaml
from pycocotools import mask as mask_utils

from fastsam_core import TINY_CHECKPOINT, EverythingParams, FastSAMModel, Segmenter
from flows.cli import main
from flows.label import label_collection
from schemas import RunLayout, parse_job
from tests.support.corpus import corpus
from tests.support.helpers import flow_job, plan_for, scene_bytes
from workers.labelling.decode import decode_image
from workers.storage import LocalStore

TIMING = ["read_ms", "decode_ms", "segment_ms", "score_ms"]


def _table(root: str, name: str):
    return ds.dataset(root + "/" + name, format="parquet").to_table()


def test_end_to_end_on_loopback_s3(s3_endpoint, bucket, prefect_harness):
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    objects = {f"scenes/{i:02d}.jpg": scene_bytes(i) for i in range(10)}
    objects.update({k: v for k, (v, _) in corpus().items() if k.startswith("bad/") and k != "bad/big.jpg"})
    for key, data in objects.items():
        s3.put_object(Bucket=bucket, Key=f"in/{key}", Body=data)
    job = flow_job(f"s3://{bucket}/in", f"s3://{bucket}/out", storage={"endpoint_url": s3_endpoint})
    summary = label_collection(job=job, run_id="e2e")
    assert summary["state"] == "committed" and summary["shards_done"] == summary["shards_planned"] == 4
    assert summary["counts"]["objects"] == len(objects) and summary["counts"]["labelled"] == 10

    def read(name):
        keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=f"out/runs/e2e/{name}/")["Contents"]]
        import pyarrow as pa
        import pyarrow.parquet as pq

        return pa.concat_tables(
            [pq.read_table(io.BytesIO(s3.get_object(Bucket=bucket, Key=k)["Body"].read())) for k in keys]
        )

    images = read("images").to_pylist()
    assert sorted(r["key"] for r in images) == sorted(objects)  # every source object once
    model = FastSAMModel.load(TINY_CHECKPOINT)
    segment = Segmenter(model, EverythingParams(imgsz=model.default_imgsz))
    masks = read("masks").to_pylist()
    compared = 0
    for img in images:
        if img["status"] != "ok":
            continue
        direct = segment([decode_image(objects[img["key"]], img["key"], 10**8).rgb])[0]
        rows = sorted((m for m in masks if m["image_id"] == img["image_id"]), key=lambda m: m["mask_id"])
        assert len(rows) == len(direct)
        for m, rle in zip(rows, direct.rles, strict=True):
            ours = mask_utils.decode({"size": m["rle_size"], "counts": m["rle_counts"].encode()})
            np.testing.assert_array_equal(ours, mask_utils.decode(rle))
            compared += 1
    assert compared > 20
    manifest = json.loads(s3.get_object(Bucket=bucket, Key="out/runs/e2e/manifest.json")["Body"].read())
    assert manifest["summary"]["counts"] == summary["counts"] and manifest["summaries"] == "runs/e2e/summaries.parquet"
    assert manifest["models"]["fastsam"]["sha256"] == [images[0]["model_sha256"]]
    body = s3.get_object(Bucket=bucket, Key="out/runs/e2e/summaries.parquet")["Body"].read()
    states = pq.read_table(io.BytesIO(body))  # one row per shard, in order, with the attempt that counts
    assert states["shard_id"].to_pylist() == [0, 1, 2, 3] and manifest["shards"] is None
    assert states["attempt_id"].to_pylist() == [json.loads(t)["attempt_id"] for t in states["summary"].to_pylist()]
    assert sum(states["objects"].to_pylist()) == summary["counts"]["objects"] == len(images)
    assert sum(states["masks"].to_pylist()) == summary["counts"]["masks"] == len(masks)
    s3.head_object(Bucket=bucket, Key="out/runs/e2e/_SUCCESS")
    leftovers = s3.list_objects_v2(Bucket=bucket, Prefix="out/runs/e2e/_attempts/").get("Contents", [])
    assert leftovers == []  # every attempt's staged copies are gone once committed
    # Running the same run id again labels nothing, changes nothing and gives the same summary counts.
    before = sorted(
        (o["Key"], o["ETag"]) for o in s3.list_objects_v2(Bucket=bucket, Prefix="out/runs/e2e/")["Contents"]
    )
    again = label_collection(job=job, run_id="e2e")
    after = sorted((o["Key"], o["ETag"]) for o in s3.list_objects_v2(Bucket=bucket, Prefix="out/runs/e2e/")["Contents"])
    assert again["counts"] == summary["counts"] and again["shards_done"] == 4
    assert [k for k, _ in after if not k.startswith("out/runs/e2e/lease/")] == [
        k for k, _ in before if not k.startswith("out/runs/e2e/lease/")
    ]
    assert summary["labelled_now"] == len(objects) and again["labelled_now"] == 0


def test_incremental_run_labels_only_new_and_changed(tmp_path, prefect_harness):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(6):
        (src / f"{i}.jpg").write_bytes(scene_bytes(i))
    job = flow_job(str(src), str(tmp_path / "out"))
    first = label_collection(job=job, run_id="day-1")
    assert first["counts"]["objects"] == 6
    (src / "6.jpg").write_bytes(scene_bytes(6))
    (src / "7.jpg").write_bytes(scene_bytes(7))
    time.sleep(0.01)
    (src / "2.jpg").write_bytes(scene_bytes(20))  # changed content: new size and mtime, so a new ETag
    second = label_collection(job=job, run_id="day-2", incremental=True)
    assert second["counts"]["objects"] == 3 and second["counts"]["skipped"] == 5
    keys = sorted(_table(str(tmp_path / "out/runs/day-2"), "images")["key"].to_pylist())
    assert keys == ["2.jpg", "6.jpg", "7.jpg"]
    third = label_collection(job=job, run_id="day-3", incremental=True)
    assert third["counts"]["objects"] == 0 and third["counts"]["skipped"] == 8


def _rows(root: Path, name: str) -> list[dict]:
    t = _table(str(root), name)
    t = t.drop_columns([c for c in [*TIMING, "run_id"] if c in t.column_names])
    return sorted(t.to_pylist(), key=lambda r: (r["image_id"], r.get("mask_id", -1)))


def test_resume_after_the_flow_process_is_killed(tmp_path, prefect_harness):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(24):
        (src / f"img-{i:02d}.jpg").write_bytes(scene_bytes(100 + i, 240, 320))
    job_file = tmp_path / "job.yaml"
    job_file.write_text(yaml.safe_dump(flow_job(str(src), str(tmp_path / "out"), compute={"shard_size": 2})))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}  # its own ephemeral server
    cmd = [sys.executable, "-m", "flows.cli", "run", str(job_file), "--run-id", "killed"]
    proc = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    done_dir = tmp_path / "out/runs/killed/done"
    deadline = time.monotonic() + 300
    while not (done_dir.is_dir() and len(list(done_dir.glob("*.json"))) >= 2):
        assert proc.poll() is None and time.monotonic() < deadline, "the run ended before it could be killed"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # the flow, its Prefect server and its Ray cluster, mid-run
    proc.wait()
    before = {p.name: p.read_bytes() for p in done_dir.glob("*.json")}
    assert 2 <= len(before) < 12
    job = yaml.safe_load(job_file.read_text())
    resumed = label_collection(job=job, run_id="killed")
    assert resumed["shards_done"] == 12 and resumed["state"] == "committed"
    for name, data in before.items():  # shards finished before the kill were not labelled again
        assert (done_dir / name).read_bytes() == data
    label_collection(job=job, run_id="clean")
    for name in ("images", "masks"):
        assert _rows(tmp_path / "out/runs/killed", name) == _rows(tmp_path / "out/runs/clean", name)
    assert len(_rows(tmp_path / "out/runs/killed", "images")) == 24


def test_cli_exit_codes_and_status(tmp_path, prefect_harness, capsys):
    assert main(["run", "--source", str(tmp_path / "none"), "--output", str(tmp_path / "o"), "--shard-size", "0"]) == 2
    assert "compute.shard_size" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "a.jpg").write_bytes(b"")
    assert main(["run", "--source", str(empty), "--output", str(tmp_path / "o"), "--run-id", "r0"]) == 3
    capsys.readouterr()
    assert main(["status", "r0", "--output", str(tmp_path / "o")]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["state"] == "committed" and status["counts"]["failed"] == 1
    assert main(["status", "nope", "--output", str(tmp_path / "o")]) == 2


def test_a_failed_shard_is_labelled_once_and_blocks_the_commit(tmp_path, prefect_harness, monkeypatch):
    import flows.label as label_flow
    from workers.ray.pool import LabelerPool

    src = tmp_path / "src"
    src.mkdir()
    for i in range(6):
        (src / f"{i}.jpg").write_bytes(scene_bytes(i))
    job = flow_job(str(src), str(tmp_path / "out"), compute={"shard_size": 2})
    spec = parse_job(job, environ={})
    plan_for(spec, "broken")
    out, layout = LocalStore(tmp_path / "out"), RunLayout("broken")
    good = out.get(layout.shard_list(1))
    out.put(layout.shard_list(1), b"not parquet")  # shard 1 cannot be read: the same error on every try
    calls: list[int] = []
    real = LabelerPool.label
    monkeypatch.setattr(LabelerPool, "label", lambda self, run, shard: calls.append(shard) or real(self, run, shard))
    failed = r"1 shard\(s\) failed \(shard 1: TableError: .*shard-00001\.parquet is not a readable shard table"
    with pytest.raises(label_flow.RunFailedError, match=failed + r".*--run-id broken to resume"):
        label_collection(job=job, run_id="broken")
    assert sorted(calls) == [0, 1, 2]  # the deterministic failure was not retried
    assert not (tmp_path / "out/runs/broken/_SUCCESS").exists()
    assert sorted(p.name for p in (tmp_path / "out/runs/broken/done").iterdir()) == [
        "shard-00000.json",
        "shard-00002.json",
    ]
    out.put(layout.shard_list(1), good)
    resumed = label_collection(job=job, run_id="broken")
    assert resumed["state"] == "committed" and resumed["counts"]["objects"] == 6
    assert sorted(calls) == [0, 1, 1, 2]  # the resume labelled only the shard that was not done
    assert (tmp_path / "out/runs/broken/_SUCCESS").exists()


def test_a_bad_prompt_table_fails_the_run_before_any_work(tmp_path, prefect_harness):
    from schemas.errors import PromptTableError

    (tmp_path / "src").mkdir()
    (tmp_path / "p.jsonl").write_text('{"key": "a.jpg", "box": [5, 5, 1, 1]}\n')
    job = flow_job(str(tmp_path / "src"), str(tmp_path / "out"), prompt_table=str(tmp_path / "p.jsonl"))
    with pytest.raises(PromptTableError, match=r"row 0: 'box' must be"):
        label_collection(job=job, run_id="bad-table")
    assert not (tmp_path / "out").exists()  # nothing planned or written
