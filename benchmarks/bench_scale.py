"""Scale simulation: planning N objects, and the control plane feeding many actors that sleep instead of labelling.

    python -m benchmarks.bench_scale                  # 10M objects planned, a 1M-object flow with 64 actors
    python -m benchmarks.bench_scale --objects 100000000

Every number is a simulation on this machine, labelled as such; each stage runs in its own process,
so each peak RSS is that stage's own:

- plan (listing): the streaming planner over a synthetic store listing of N keys (no network: what
  it costs to turn pages into shard lists), every shard list written to a local output.
- plan (manifest): the same N keys handed over as a Parquet `source.manifest`, sorted by DuckDB.
- flow: the real flow (`label_collection`, Prefect's temporary server, the streaming planner over a
  manifest of M keys, the Ray pool with `--actors` stand-in actors, markers, the commit) where each
  stand-in reads its shard list, sleeps `--sleep-ms` per image and commits a shard of rows with
  the real attempt protocol. Prints the time to the first dispatched shard, the sustained
  shards/s and images/s the control plane reached, Prefect task runs in the flow run, the commit's
  seconds and the driver's peak RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

#: Environment variable carrying the stand-in actors' sleep per image (Ray workers inherit it).
SLEEP_ENV = "FASTSAM_BENCH_SLEEP_MS"


def synthetic_keys(start: int, stop: int):
    """Keys start..stop-1 of the synthetic collection, in key order, as an Arrow array (vectorised)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    ids = pa.array(range(start, stop), pa.int64())
    cams = pc.cast(pc.divide(ids, 100_000), pa.string())  # 100k frames a camera folder
    frame = pc.utf8_lpad(pc.cast(ids, pa.string()), 10, "0")
    return pc.binary_join_element_wise(pc.utf8_lpad(cams, 5, "0"), "/f", frame, ".jpg", "")


class SyntheticListing:
    """A store listing N synthetic objects in key order, a page at a time (what S3 hands a planner)."""

    def __init__(self, n: int, uri: str):
        self.n, self.uri = n, uri

    def list(self, prefix: str = "", skipped=None, start_after=None):
        from workers.storage import ObjectInfo

        page = 1000
        for start in range(0, self.n, page):
            keys = synthetic_keys(start, min(start + page, self.n)).to_pylist()
            for i, key in enumerate(keys, start):
                if start_after is None or key > start_after:
                    yield ObjectInfo(key, 100_000 + i % 1000, f"{i:032x}")

    def uri_of(self, key: str) -> str:
        return self.uri + key


def write_manifest(path: Path, n: int) -> None:
    """A Parquet manifest of the N synthetic keys (key, size, etag), written in row groups of 1M."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([("key", pa.string()), ("size", pa.int64()), ("etag", pa.string())])
    with pq.ParquetWriter(path, schema) as w:
        for start in range(0, n, 1_000_000):
            stop = min(start + 1_000_000, n)
            ids = range(start, stop)
            w.write_table(pa.table({"key": synthetic_keys(start, stop),
                                    "size": pa.array([100_000 + i % 1000 for i in ids], pa.int64()),
                                    "etag": pa.array([f"{i:032x}" for i in ids])}, schema=schema))  # fmt: skip


class SleepingLabeler:
    """A stand-in Labeler actor: reads its shard list, sleeps per image, commits rows with the real protocol."""

    def __init__(self, job_json: str):
        from schemas import Job
        from workers.storage import open_store

        self.job = Job.model_validate_json(job_json)
        self.output = open_store(self.job.output, self.job.storage)
        self.sleep_s = float(os.environ.get(SLEEP_ENV, "0")) / 1000
        self.worker = f"{socket.gethostname()}:{os.getpid()}"

    def ready(self) -> dict:
        return {"worker": self.worker, "models": {"fastsam": ["0" * 64]}, "clip_model": None}

    def label_shard(self, run_id: str, shard_id: int) -> dict:
        from schemas import RunLayout
        from schemas.tables import image_id
        from workers.labelling import rows
        from workers.runs import attempts, parts
        from workers.runs.plan import read_shard_list

        layout = RunLayout(run_id)
        done = attempts.read_marker(self.output, layout, shard_id)
        if done is not None:
            return done.summary.model_dump()
        t0 = time.perf_counter()
        objects = read_shard_list(self.output, layout, shard_id)
        time.sleep(len(objects) * self.sleep_s)
        uri = self.job.source.uri.rstrip("/") + "/"
        results = [rows.ImageResult(key=o.key, uri=uri + o.key, image_id=image_id(uri + o.key), etag=o.etag,
                                    size=o.size) for o in objects]  # fmt: skip
        part = parts.ShardPart(
            images=rows.images_table(results, run_id, shard_id, "0" * 64, None),
            masks=rows.masks_table([], run_id, []),
            prompts=None,
            stage_seconds={"segment": len(objects) * self.sleep_s},
            models={"fastsam": ["0" * 64]},
            worker=self.worker,
        )
        return attempts.commit_part(self.output, layout, shard_id, attempts.new_attempt_id(), part, t0).model_dump()


def _plan(n: int, kind: str, out: Path, shard_size: int) -> dict:
    """Plan N objects from a synthetic listing or manifest in this process; its numbers."""
    from schemas import RunLayout, parse_job
    from tests.support.memory import peak_rss_bytes
    from workers.runs.planner import Planner
    from workers.storage import LocalStore

    source = {"uri": "s3://bench-source/cams"}
    listing = SyntheticListing(n, "s3://bench-source/cams/")
    if kind == "manifest":
        t0 = time.perf_counter()
        write_manifest(out / "manifest.parquet", n)
        setup = time.perf_counter() - t0
        source = {"uri": str(out / "src"), "manifest": str(out / "manifest.parquet")}
        (out / "src").mkdir()
        listing = LocalStore(out / "src")
    job = parse_job({"source": source, "output": str(out / "out"), "compute": {"shard_size": shard_size}}, environ={})
    base = peak_rss_bytes(reset=True)
    planner = Planner(job, listing, LocalStore(out / "out"), RunLayout("scale"), {"bench": kind})
    first: list[float] = []

    def consume() -> None:
        for _ in planner.shard_ids():
            if not first:
                first.append(time.perf_counter())

    thread = threading.Thread(target=consume)
    t0 = time.perf_counter()
    thread.start()
    plan = planner.run()
    seconds = time.perf_counter() - t0
    thread.join()
    return {
        "kind": kind, "objects": plan.objects, "shards": plan.shards, "seconds": round(seconds, 2),
        "first_shard_s": round(first[0] - t0, 2), "peak_rss_mib": round(peak_rss_bytes() / 2**20),
        "base_rss_mib": round(base / 2**20), **({"manifest_write_s": round(setup, 1)} if kind == "manifest" else {}),
    }  # fmt: skip


def _flow(m: int, actors: int, sleep_ms: float, out: Path, shard_size: int) -> dict:
    """Run the real flow over an M-object manifest with sleeping stand-in actors in this process; its numbers."""
    os.environ[SLEEP_ENV] = str(sleep_ms)
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from flows.label import label_collection
    from flows.prefect_server import offline, quiet_logs, temporary_server
    from flows.run import prepare
    from schemas import RunLayout
    from tests.support.memory import peak_rss_bytes
    from workers import runs
    from workers.ray import reaper
    from workers.ray.pool import PoolStart
    from workers.storage import LocalStore

    write_manifest(out / "manifest.parquet", m)
    (out / "src").mkdir()
    job = {
        "source": {"uri": str(out / "src"), "manifest": str(out / "manifest.parquet")},
        "output": str(out / "out"),
        "tables": False,
        "compute": {"shard_size": shard_size, "num_actors": actors, "cpus_per_actor": round(1.5 / actors, 4),
                    "read_threads": 1},
    }  # fmt: skip
    offline()
    quiet_logs()
    prepared = prepare(job, "scale")
    with reaper.watch(), PoolStart(prepared.job, actor=SleepingLabeler) as pool, temporary_server():
        samples: list[tuple[float, float]] = []  # (wall, this process's CPU seconds) every 0.1 s
        stop = threading.Event()

        def sample() -> None:
            while not stop.wait(0.1):
                samples.append((time.time(), time.process_time()))

        sampler = threading.Thread(target=sample, daemon=True)
        t0 = time.time()
        samples.append((t0, time.process_time()))
        sampler.start()
        state = label_collection(prepared=prepared, pool=pool, return_state=True)
        wall = time.time() - t0
        stop.set()
        sampler.join()
        samples.append((time.time(), time.process_time()))
        summary = state.result()
        with get_client(sync_client=True) as client:
            flow_run = FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id]))
            task_runs = client.read_task_runs(flow_run_filter=flow_run)
    output = LocalStore(out / "out")
    layout = RunLayout("scale")
    markers = runs.done_markers(output, layout).values()
    created = sorted(mk.created_at.timestamp() for mk in markers)
    started = min(mk.created_at.timestamp() - mk.summary.seconds for mk in markers)
    committed = (out / "out" / layout.success).stat().st_mtime
    span = created[-1] - created[0]

    def cpu_at(when: float) -> float:
        return next((c for w, c in samples if w >= when), samples[-1][1])

    labelling_cpu = cpu_at(created[-1]) - cpu_at(created[0])  # planning (if still going) and dispatch
    commit_cpu = samples[-1][1] - cpu_at(created[-1])
    return {
        "objects": summary["counts"]["objects"], "shards": len(created), "actors": actors, "sleep_ms": sleep_ms,
        "wall_s": round(wall, 1), "first_dispatch_s": round(started - t0, 2),
        "shards_per_s": round((len(created) - 1) / span, 1) if span > 0 else None,
        "images_per_s": round((len(created) - 1) * shard_size / span) if span > 0 else None,
        "task_runs": sorted(tr.name.rsplit("-", 1)[0] for tr in task_runs),
        "commit_s": round(committed - created[-1], 1), "driver_peak_rss_mib": round(peak_rss_bytes() / 2**20),
        "dispatch_cpu_ms_per_shard": round(labelling_cpu * 1000 / max(len(created) - 1, 1), 2),
        "commit_cpu_ms_per_shard": round(commit_cpu * 1000 / len(created), 2),
    }  # fmt: skip


def _child(args: list[str]) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.bench_scale", *args]
    done = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--objects", type=int, default=10_000_000, help="objects planned (100000000 for 100M)")
    p.add_argument("--flow-objects", type=int, default=1_000_000, help="objects through the real flow")
    p.add_argument("--actors", type=int, default=64, help="stand-in actors in the flow")
    p.add_argument("--sleep-ms", type=float, default=0.0, help="stand-in actors' sleep per image")
    p.add_argument("--shard-size", type=int, default=256)
    p.add_argument("--skip-listing", action="store_true", help="plan from the manifest only")
    p.add_argument("--stage", choices=["listing", "manifest", "flow"], help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.stage:
        out = Path(a.out)
        out.mkdir(parents=True, exist_ok=True)
        got = (_flow(a.flow_objects, a.actors, a.sleep_ms, out, a.shard_size) if a.stage == "flow"
               else _plan(a.objects, a.stage, out, a.shard_size))  # fmt: skip
        print(json.dumps(got))
        return
    print(f"scale simulation on {os.cpu_count()} CPUs (no images are read; stand-in actors sleep)")
    common = ["--shard-size", str(a.shard_size)]
    for kind in ("manifest",) if a.skip_listing else ("listing", "manifest"):
        with tempfile.TemporaryDirectory(prefix="fastsam-scale-") as tmp:
            got = _child(["--stage", kind, "--out", tmp, "--objects", str(a.objects), *common])
        per_m = got["seconds"] / (a.objects / 1e6)
        print(f"plan ({kind:>8}): {got['objects']:,} objects in {got['shards']:,} shard lists: {got['seconds']:.1f} s "
              f"({per_m:.2f} s per million), first shard handed out after {got['first_shard_s']:.2f} s, peak RSS "
              f"{got['peak_rss_mib']} MiB (at start {got['base_rss_mib']} MiB)"
              + (f"; manifest written in {got['manifest_write_s']} s" if kind == "manifest" else ""))  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="fastsam-scale-") as tmp:
        got = _child(["--stage", "flow", "--out", tmp, "--flow-objects", str(a.flow_objects), "--actors",
                      str(a.actors), "--sleep-ms", str(a.sleep_ms), *common])  # fmt: skip
    print(f"flow: {got['objects']:,} objects, {got['shards']:,} shards, {got['actors']} stand-in actors sleeping "
          f"{got['sleep_ms']} ms/image: {got['wall_s']} s wall; first shard labelled {got['first_dispatch_s']} s "
          f"after the flow started (the actors' start); sustained {got['shards_per_s']} shards/s = "
          f"{got['images_per_s']:,} images/s; "
          f"Prefect task runs: {len(got['task_runs'])} ({', '.join(got['task_runs'])}); commit {got['commit_s']} s; "
          f"driver peak RSS {got['driver_peak_rss_mib']} MiB; driver CPU per shard: {got['dispatch_cpu_ms_per_shard']} "
          f"ms while labelling (planning and dispatch), {got['commit_cpu_ms_per_shard']} ms in the commit")  # fmt: skip
    ceiling = 1000 / got["dispatch_cpu_ms_per_shard"]
    print(f"control-plane ceiling: {ceiling:,.0f} shards/s per driver core = {ceiling * a.shard_size:,.0f} images/s = "
          f"{ceiling * a.shard_size / 20:,.0f} GPU actors at 20 images/s each (simulation; reached here: "
          f"{got['shards_per_s']} shards/s with the actors sharing {os.cpu_count()} CPUs)")  # fmt: skip


if __name__ == "__main__":
    main()
