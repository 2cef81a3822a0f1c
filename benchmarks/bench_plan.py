"""Planning an incremental run after N earlier objects: time and peak memory.

    python -m benchmarks.bench_plan [--objects 1000000] [--new 1000]

The source is an in-memory listing of N + new objects (what a paginated S3 listing yields, without
the network); the output holds one committed run that labelled the N earlier objects, in the
incremental index (`index/part-*.parquet`), either with the planning job's labelling fingerprint
(only the new objects are planned) or with another one (every object is planned: N relabelled).
Each case runs in a fresh process so its peak RSS is its own. A last case plans a first run of N
objects (nothing seen before), every shard list written.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path


class ListingStore:
    """A source whose listing is N synthetic objects (keys in order), nothing else."""

    def __init__(self, n: int):
        self.n = n
        self.uri = "s3://bench-source/cams/"

    def list(self, prefix: str = "", skipped=None, start_after=None):
        from workers.storage import ObjectInfo

        for cam in range(97):  # in key order, as S3 lists
            for i in range(cam, self.n, 97):
                key = f"cam{cam:02d}/frame-{i:08d}.jpg"
                if start_after is None or key > start_after:
                    yield ObjectInfo(key, 100_000 + i % 1000, f"{i:032x}")

    def uri_of(self, key: str) -> str:
        return self.uri + key


def _earlier_run(out: Path, n: int, other_labels: bool) -> None:
    """A committed run under `out` that labelled the first n objects of ListingStore."""
    import pyarrow as pa

    from schemas import RunLayout
    from schemas.fingerprint import labelling_id
    from schemas.tables import IMAGES_SCHEMA
    from workers.runs import index
    from workers.storage import LocalStore
    from workers.storage.files import parquet_bytes

    store, source, layout = LocalStore(out), ListingStore(n), RunLayout("earlier")
    objs = list(source.list())
    images = pa.table(
        {
            **{name: pa.nulls(n, IMAGES_SCHEMA.field(name).type) for name in IMAGES_SCHEMA.names},
            "run_id": pa.array(["earlier"] * n),
            "shard_id": pa.array([0] * n, pa.int32()),
            "image_id": pa.array([f"{i:032x}" for i in range(n)]),
            "uri": pa.array([source.uri_of(o.key) for o in objs]),
            "key": pa.array([o.key for o in objs]),
            "etag": pa.array([o.etag for o in objs]),
            "status": pa.array(["ok"] * n),
            "model_sha256": pa.array(["0" * 64] * n),
        },
        schema=IMAGES_SCHEMA,
    )
    step = 256  # the images tables of shards of the default size
    for s, start in enumerate(range(0, n, step)):
        store.put(layout.table("images", s), parquet_bytes(images.slice(start, step)))
    labelling = labelling_id({"model.conf": 0.1} if other_labels else {})  # {}: the next plan's fingerprint
    index.add_run(store, "earlier", [images], labelling)
    store.put(layout.success, b"")


def _plan(out: Path, n: int, new: int, incremental: bool = True) -> dict:
    from schemas import RunLayout, parse_job
    from tests.support.memory import peak_rss_bytes
    from workers import runs
    from workers.storage import LocalStore

    job = parse_job({"source": {"uri": "s3://bench-source/cams"}, "output": str(out)}, environ={})
    t0 = time.perf_counter()
    layout = RunLayout("next")
    plan = runs.plan_run(job, ListingStore(n + new), LocalStore(out), layout, {}, incremental=incremental)
    seconds = time.perf_counter() - t0
    peak = peak_rss_bytes() / 2**20
    written = sum(1 for _ in (out / layout.shards_prefix).rglob("*.parquet"))
    return {
        "seconds": round(seconds, 2), "peak_rss_mib": round(peak), "listed": plan.listed, "planned": plan.objects,
        "shard_lists": written,
    }  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--objects", type=int, default=1_000_000)
    p.add_argument("--new", type=int, default=1_000)
    p.add_argument("--case", choices=["index", "relabel", "full"], help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.case:  # a child: plan once and print the numbers
        print(json.dumps(_plan(Path(args.out), args.objects, args.new, incremental=args.case != "full")))
        return
    print(f"planning an incremental run over {args.objects + args.new:,} listed objects, {args.objects:,} seen before")
    for case in ("index", "relabel"):
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            _earlier_run(Path(tmp), args.objects, other_labels=case == "relabel")
            setup = time.perf_counter() - t0
            cmd = [sys.executable, "-m", "benchmarks.bench_plan", "--case", case, "--out", tmp]
            cmd += ["--objects", str(args.objects), "--new", str(args.new)]
            got = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines()[-1])
            assert got["planned"] == args.new + (args.objects if case == "relabel" else 0), got
            print(f"{case:>6}: {got['seconds']:6.2f} s, peak RSS {got['peak_rss_mib']:5d} MiB, "
                  f"{got['planned']:,} planned (setup {setup:.1f} s)")  # fmt: skip
    print(f"planning a first run: {args.objects:,} listed objects, all of them new, every shard list written")
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "benchmarks.bench_plan", "--case", "full", "--out", tmp]
        cmd += ["--objects", str(args.objects), "--new", "0"]
        got = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines()[-1])
        assert got["planned"] == args.objects, got
        print(f"  full: {got['seconds']:6.2f} s, peak RSS {got['peak_rss_mib']:5d} MiB, {got['planned']:,} planned "
              f"in {got['shard_lists']:,} shard lists")  # fmt: skip


if __name__ == "__main__":
    main()
