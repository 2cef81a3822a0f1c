"""`make bench-gpu` on the CPU path: the table it prints holds every cell, measured (GPU-only columns empty)."""

import re

from benchmarks import bench_gpu


def test_the_gpu_benchmark_runs_on_the_cpu_and_prints_one_table(capsys):
    argv = ["--device", "cpu", "--archs", "s", "--precisions", "fp16,fp32", "--batches", "1,2", "--imgsz", "320",
            "--seconds", "0.2", "--size", "240x320", "--crops", "8"]  # fmt: skip
    rows = bench_gpu.main(argv)
    out = capsys.readouterr().out
    assert [(r["model"], r["precision"], r["batch"]) for r in rows] == [
        ("FastSAM-s", "fp32", 1),
        ("FastSAM-s", "fp32", 2),
    ]
    for r in rows:
        assert r["forward_images_s"] > 0 and r["segment_images_s"] > 0 and r["masks_per_image"] >= 1
        assert r["segment_over_forward"] == r["forward_images_s"] / r["segment_images_s"]
        assert r["gpu_busy"] is None  # no GPU: no busy share
    lines = out.splitlines()
    assert lines[0].startswith("CPU: everything mode at imgsz 320 on 240x320 photos")
    table = [line for line in lines if line.startswith("| FastSAM-s | fp32 |")]
    assert len(table) == 2 and all(line.endswith("| - |") for line in table)
    assert re.search(r"^\| CLIP ViT-B/32 \| fp32 \| 256 \| crops/s: [1-9]\d* \|", out, re.M)
    assert "skipped: s fp16 (no float16 on the CPU)" in out
