"""Export time and peak memory against run size: exports stream, so memory must not grow with the run.

    python -m benchmarks.bench_export [--images 3000] [--masks 10]

Two synthetic committed runs (tests.support.synthetic_run: 240x320 images, ellipse masks), one with
`--images` images and one with a tenth of them, are exported to every format, each export in a
fresh process so its peak RSS (VmHWM) is its own.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _child(out: str, run_id: str, to: str, dest: str) -> dict:
    from tests.support.memory import peak_rss_bytes
    from workers.outputs.export import ExportOptions, export_run

    base = peak_rss_bytes()
    t0 = time.perf_counter()
    shape = "both" if to == "label-studio" else "brush"
    summary = export_run(out, run_id, ExportOptions(to, dest, ls_shape=shape, images="none"))  # no source images
    return {
        "seconds": round(time.perf_counter() - t0, 2),
        "peak_mib": round(peak_rss_bytes() / 2**20),
        "base_mib": round(base / 2**20),
        "masks": summary.annotations,
        "images": summary.images,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=3000)
    p.add_argument("--masks", type=int, default=10, help="masks per image")
    p.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(_child(*args.child)))
        return
    from tests.support.synthetic_run import make_run
    from workers.storage import LocalStore

    with tempfile.TemporaryDirectory() as tmp:
        out = LocalStore(Path(tmp) / "out")
        sizes = {"small": args.images // 10, "large": args.images}
        for name, n in sizes.items():
            t0 = time.perf_counter()
            make_run(out, name, n_images=n, masks_per_image=args.masks, shard_size=256, size=(240, 320))
            print(f"run {name}: {n} images made in {time.perf_counter() - t0:.1f} s")
        print("| format | run | images | masks | seconds | peak RSS MiB (imports alone) |")
        print("|---|---|---|---|---|---|")
        for to in ("coco", "label-studio", "yolo"):
            for name in sizes:
                dest = str(Path(tmp) / f"{to}-{name}")
                cmd = [sys.executable, "-m", "benchmarks.bench_export", "--child", out.uri, name, to, dest]
                got = json.loads(
                    subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines()[-1]
                )
                print(f"| {to} | {name} | {got['images']} | {got['masks']} | {got['seconds']} | "
                      f"{got['peak_mib']} ({got['base_mib']}) |")  # fmt: skip


if __name__ == "__main__":
    main()
