"""`make bench-scale` at a small size: every stage runs in its own process and reports what it did, exactly."""

import json
import subprocess
import sys

from tests.support import ROOT


def _stage(tmp_path, *args: str) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.bench_scale", "--out", str(tmp_path), *args]
    done = subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, text=True, timeout=600)
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_planning_from_a_listing_and_from_a_manifest_cuts_the_same_shards(tmp_path):
    listing = _stage(tmp_path / "a", "--stage", "listing", "--objects", "5000", "--shard-size", "64")
    manifest = _stage(tmp_path / "b", "--stage", "manifest", "--objects", "5000", "--shard-size", "64")
    for got in (listing, manifest):
        assert (got["objects"], got["shards"]) == (5000, 79)
        assert 0 <= got["first_shard_s"] <= got["seconds"] and got["peak_rss_mib"] > 0
    assert sorted(p.name for p in (tmp_path / "a/out/runs/scale/shards").iterdir()) == sorted(
        p.name for p in (tmp_path / "b/out/runs/scale/shards").iterdir()
    )


def test_the_flow_runs_a_constant_number_of_prefect_task_runs_whatever_the_shards(tmp_path):
    got = _stage(tmp_path, "--stage", "flow", "--flow-objects", "3000", "--shard-size", "50", "--actors", "4")
    assert (got["objects"], got["shards"], got["actors"]) == (3000, 60, 4)
    assert got["task_runs"] == ["commit", "label-shards", "plan", "publish-tables"]  # 60 shards, 4 task runs
    assert got["shards_per_s"] > 0 and got["dispatch_cpu_ms_per_shard"] > 0 and got["commit_s"] >= 0
    assert (tmp_path / "out/runs/scale/_SUCCESS").exists()
