"""`make bench-segment` at a small size: both window paths run, agree, and the table adds up."""

import re
import subprocess
import sys

from tests.support import ROOT


def test_the_segment_benchmark_prints_its_table_and_checks_both_paths_agree():
    cmd = [sys.executable, "-m", "benchmarks.bench_segment", "--rounds", "1", "--runtime", "torch", "--scale", "n",
           "--sizes", "120x160,300x450", "--max-det", "60"]  # fmt: skip
    out = subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, text=True, timeout=600).stdout
    rows = re.findall(r"^\| (\d+)x(\d+) \| [\d.]+ \| (\d+) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \|", out, re.M)
    assert [(int(h), int(w)) for h, w, *_ in rows] == [(120, 160), (300, 450)]
    assert all(int(masks) == 60 for _, _, masks, *_ in rows)  # max_det masks on each image
    assert all(float(fwd) > 0 and float(d) > 0 and float(s) > 0 for *_, fwd, d, s in rows)
    assert "the same masks, RLE and stability in every round" in out
