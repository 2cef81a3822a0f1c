"""Benchmark: everything mode here vs ultralytics' FastSAM predictor, same weights, same image.

Each side runs in its own process (so peak RSS is its own), on one large synthetic photo with a
random-weight checkpoint that emits hundreds of masks. ultralytics' time includes pycocotools
encoding of its dense masks, since RLE is what both must deliver. Run with `make bench`, or:

    python -m benchmarks.bench_everything --height 2000 --width 3000 --imgsz 1024 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _image(h: int, w: int) -> np.ndarray:
    from fastsam_core.testing.synthetic import make_scene

    return make_scene(np.random.default_rng(0), h, w, n_shapes=(8, 12))[0]


def _worker(impl: str, ckpt: str, h: int, w: int, imgsz: int, repeats: int, device: str) -> dict:
    import torch

    torch.set_num_threads(torch.get_num_threads())
    img = _image(h, w)
    times = {"forward_total_s": [], "n_masks": 0}
    if impl == "ours":
        from fastsam_core import EverythingParams, FastSAMModel, Segmenter

        seg = Segmenter(FastSAMModel.load(ckpt, allow_unpinned=True, device=device), EverythingParams(imgsz=imgsz))
        seg.model.warmup(imgsz)
        for _ in range(repeats):
            t = time.perf_counter()
            out = seg([img])[0]
            times["forward_total_s"].append(time.perf_counter() - t)
        times["n_masks"] = len(out)
    else:
        import pycocotools.mask as mask_utils
        import torchvision  # noqa: F401 - gives ultralytics' NMS its fast torchvision path too, as in ours
        from ultralytics import FastSAM

        model = FastSAM(ckpt)
        bgr = img[..., ::-1].copy()
        kw = dict(imgsz=imgsz, conf=0.4, iou=0.9, retina_masks=True, device=device, verbose=False)
        model.predict(bgr, **kw)  # warm-up
        for _ in range(repeats):
            t = time.perf_counter()
            r = model.predict(bgr, **kw)[0]
            m = r.masks.data.cpu().numpy().astype(np.uint8)
            rles = mask_utils.encode(np.asfortranarray(m.transpose(1, 2, 0)))
            times["forward_total_s"].append(time.perf_counter() - t)
        times["n_masks"] = len(rles)
    times["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return times


def main(argv: list[str] | None = None) -> None:
    """Run both sides and print a table with the ratio."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--height", type=int, default=2000)
    p.add_argument("--width", type=int, default=3000)
    p.add_argument("--imgsz", type=int, default=1024)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--worker", choices=["ours", "ultralytics"], help=argparse.SUPPRESS)
    p.add_argument("--ckpt", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.worker:
        print(json.dumps(_worker(a.worker, a.ckpt, a.height, a.width, a.imgsz, a.repeats, a.device)))
        return
    from tests.support.helpers import make_random_checkpoint

    with tempfile.TemporaryDirectory() as d:
        ckpt = make_random_checkpoint(Path(d) / "random-seg.pt", imgsz=a.imgsz)
        res = {}
        for impl in ("ultralytics", "ours"):
            cmd = [sys.executable, "-m", "benchmarks.bench_everything", "--worker", impl, "--ckpt", str(ckpt)]
            cmd += ["--height", str(a.height), "--width", str(a.width), "--imgsz", str(a.imgsz)]
            cmd += ["--repeats", str(a.repeats), "--device", a.device]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            res[impl] = json.loads(out.strip().splitlines()[-1])
    print(f"image {a.height}x{a.width}, imgsz {a.imgsz}, device {a.device}, best of {a.repeats}")
    print(f"{'':12}{'masks':>8}{'time s (to RLE)':>18}{'peak RSS MB':>14}")
    for impl, r in res.items():
        print(f"{impl:12}{r['n_masks']:>8}{min(r['forward_total_s']):>18.2f}{r['peak_rss_mb']:>14.0f}")
    u, o = res["ultralytics"], res["ours"]
    speed = min(u["forward_total_s"]) / min(o["forward_total_s"])
    print(f"ours vs ultralytics: {speed:.2f}x faster, {u['peak_rss_mb'] / o['peak_rss_mb']:.2f}x less peak RSS")


if __name__ == "__main__":
    main()
