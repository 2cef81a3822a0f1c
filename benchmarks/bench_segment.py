"""The segment stage on dense photos: network forward against post-processing, dense windows against sign windows.

    python -m benchmarks.bench_segment [--rounds 3] [--runtime onnxruntime] [--scale s] [--conf 0.02]

The dense preset: generated scenes at the photo sizes people label (0.3 to 24 MP: 4:3, 3:2 and
16:9, phone and camera), a one-class YOLOv8-seg network at `--scale` ("s" is FastSAM-s's
architecture) with random weights rescaled to emit hundreds of masks, `imgsz` 1024, retina masks,
`max_det` 300 at a `--conf` low enough that every image has 300. Per image and in interleaved
rounds, the segment stage (`Segmenter`) with dense windows (`dense_windows=True`, the path GPUs
take) and with sign windows (the CPU default), the network's forward pass timed inside the same
call; every round checks that both give the same RLE strings, stability and boxes. Printed: per
image size, forward seconds, post-processing seconds (the segment stage minus its forward) of each
path, their ratio to the forward, and the totals.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

#: (height, width) of the dense preset: 0.3, 1, 2, 3.1, 12 (4:3), 12 (3:2) and 24 MP (3:2).
SIZES = [(480, 640), (768, 1024), (1080, 1920), (1536, 2048), (3024, 4032), (2832, 4240), (4000, 6000)]


class TimedForward:
    """Wraps a model's forward pass to add up its seconds."""

    def __init__(self, model):
        self.model, self.seconds = model, 0.0
        self._forward = model.forward
        model.forward = self

    def __call__(self, x):
        t0 = time.perf_counter()
        out = self._forward(x)
        self.seconds += time.perf_counter() - t0
        return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--runtime", choices=["torch", "onnxruntime"], default="onnxruntime")
    ap.add_argument("--scale", default="s")
    ap.add_argument("--conf", type=float, default=0.02)
    ap.add_argument("--max-det", type=int, default=300)
    ap.add_argument("--sizes", help="HxW,HxW,... instead of the dense preset")
    args = ap.parse_args()

    import torch

    from fastsam_core import EverythingParams, FastSAMModel, Segmenter
    from fastsam_core.testing.synthetic import make_scene
    from tests.support.helpers import make_random_checkpoint

    torch.set_num_threads(len(os.sched_getaffinity(0)))
    work = Path(tempfile.mkdtemp(prefix="bench-segment-"))
    ckpt = make_random_checkpoint(work / f"fastsam-{args.scale}-random.pt", scale=args.scale, imgsz=1024)
    model = FastSAMModel.load(ckpt, allow_unpinned=True, device="cpu")
    if args.runtime == "onnxruntime":
        model = model.use_onnxruntime(work / "onnx", threads=torch.get_num_threads())
    timer = TimedForward(model)
    params = EverythingParams(imgsz=1024, conf=args.conf, iou=0.9, max_det=args.max_det, retina=True)
    paths = {
        "dense": Segmenter(model, params, dense_windows=True),
        "sign": Segmenter(model, params, dense_windows=False),
    }
    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",")] if args.sizes else SIZES
    rng = np.random.default_rng(0)
    images = [make_scene(rng, h, w, n_shapes=(20, 30))[0] for h, w in sizes]
    for seg in paths.values():  # warm-up (and the one-off check of this machine's upsampling kernel)
        seg([images[0]])
    got: dict = {(name, i): [] for name in paths for i in range(len(images))}
    masks = {}
    for _ in range(args.rounds):
        for i, im in enumerate(images):
            out = {}
            for name, seg in paths.items():
                timer.seconds = 0.0
                t0 = time.perf_counter()
                out[name] = seg([im])[0]
                got[name, i].append((time.perf_counter() - t0, timer.seconds))
            a, b = out["dense"], out["sign"]
            same = [r["counts"] for r in a.rles] == [r["counts"] for r in b.rles]
            if not (same and np.array_equal(a.stability, b.stability) and np.array_equal(a.boxes_xyxy, b.boxes_xyxy)):
                raise SystemExit(f"sign windows differ from dense windows on image {i} {sizes[i]}")
            masks[i] = len(b)
    med = statistics.median
    print(f"# segment stage, {args.runtime} forward, yolov8{args.scale}-seg random at imgsz 1024, conf {args.conf}, "
          f"max_det {args.max_det}, retina masks, {os.cpu_count()} CPUs, median of {args.rounds} rounds")  # fmt: skip
    print(
        "| image | MP | masks | forward s | post, dense windows s | post, sign windows s | sign / forward | "
        "segment / forward |"
    )
    print("|---|---|---|---|---|---|---|---|")
    totals = {"forward": 0.0, "dense": 0.0, "sign": 0.0}
    for i, (h, w) in enumerate(sizes):
        fwd = med(f for _, f in got["sign", i])
        post = {name: med(t - f for t, f in got[name, i]) for name in paths}
        totals["forward"] += fwd
        for name in paths:
            totals[name] += post[name]
        print(f"| {h}x{w} | {h * w / 1e6:.1f} | {masks[i]} | {fwd:.3f} | {post['dense']:.3f} | {post['sign']:.3f} | "
              f"{post['sign'] / fwd:.2f} | {(fwd + post['sign']) / fwd:.2f} |")  # fmt: skip
    f, d, s = totals["forward"], totals["dense"], totals["sign"]
    print(f"| all | | | {f:.3f} | {d:.3f} | {s:.3f} | {s / f:.2f} | {(f + s) / f:.2f} |")
    print(f"post-processing: sign windows x{d / s:.2f} faster than dense windows; segment stage "
          f"{(f + d) / (f + s):.2f}x faster; the same masks, RLE and stability in every round")  # fmt: skip


if __name__ == "__main__":
    main()
