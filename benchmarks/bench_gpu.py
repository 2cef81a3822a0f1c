"""GPU benchmark in one table: FastSAM-x and FastSAM-s (random weights) in everything mode, and CLIP crops/s.

    python -m benchmarks.bench_gpu [--device cuda] [--imgsz 1024] [--batches 1,8,32] [--archs x,s]
                                   [--precisions fp16,fp32] [--seconds 4] [--size 1080x1920]
    make bench-gpu

For each architecture, precision and batch size: images/s of the network's forward pass alone (a
letterboxed batch already on the device), images/s of the segment stage (`fastsam_core.Segmenter`:
letterbox, upload, forward, NMS, masks, stability, RLE) on synthetic photos, the stage's time over
forward-only, masks per image, and the GPU's busy share while the stage ran (nvidia-smi's
`utilization.gpu` sampled every 100 ms; "-" where there is no nvidia-smi). Then CLIP ViT-B/32 crops/s
(float16 on CUDA). Random weights of the real architectures cost what trained ones do; the
checkpoints are rescaled so that they emit hundreds of masks. float16 is skipped on the CPU.
Each cell is timed for about `--seconds` after a warm-up batch: the defaults fit in 5 minutes on a
data-centre GPU.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> list[dict]:
    """Run the benchmark, print the table; its rows."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu")
    ap.add_argument("--imgsz", type=int, default=1024, help="model input size (FastSAM's: 1024)")
    ap.add_argument("--batches", default="1,8,32", help="batch sizes, comma-separated")
    ap.add_argument("--archs", default="x,s", help="FastSAM architectures: x (YOLOv8x-seg), s (YOLOv8s-seg)")
    ap.add_argument("--precisions", default="fp16,fp32")
    ap.add_argument("--seconds", type=float, default=4.0, help="timing per cell, after a warm-up batch")
    ap.add_argument("--size", default="1080x1920", help="HxW of the synthetic photos")
    ap.add_argument("--crops", type=int, default=2048, help="crops through CLIP")
    args = ap.parse_args(argv)

    import torch

    from tests.support.helpers import make_random_checkpoint

    device = torch.device(args.device)
    h, w = (int(v) for v in args.size.split("x"))
    photos = [_photo(h, w, seed) for seed in range(8)]
    rows: list[dict] = []
    skipped = []
    with tempfile.TemporaryDirectory() as tmp:
        for arch in args.archs.split(","):
            ckpt = make_random_checkpoint(Path(tmp) / f"fastsam-{arch}.pt", seed=0, scale=arch)
            for precision in args.precisions.split(","):
                if precision == "fp16" and device.type != "cuda":
                    skipped.append(f"{arch} {precision} (no float16 on the CPU)")
                    continue
                rows += _cells(ckpt, arch, precision, device, photos, args)
                if device.type == "cuda":
                    torch.cuda.empty_cache()
        crops_s = _clip_rate(device, args.crops, args.seconds)
    _print(rows, crops_s, skipped, args, h, w)
    return rows


def _cells(ckpt: Path, arch: str, precision: str, device, photos: list[np.ndarray], args) -> list[dict]:
    """One row per batch size for one architecture and precision."""
    import torch

    from fastsam_core import EverythingParams, FastSAMModel, Segmenter
    from fastsam_core.everything import letterbox

    model = FastSAMModel.load(ckpt, allow_unpinned=True, device=device, half=precision == "fp16")
    seg = Segmenter(model, EverythingParams(imgsz=args.imgsz))
    rows = []
    for batch in (int(b) for b in args.batches.split(",")):
        images = [photos[i % len(photos)] for i in range(batch)]
        x = torch.from_numpy(letterbox(images, args.imgsz, model.stride)).to(device)
        x = x.permute(0, 3, 1, 2).contiguous().float().div_(255)
        forward = _rate(lambda x=x: model.forward(x), batch, args.seconds, device)
        masks: list[int] = []
        with _busy(device) as busy:
            stage = _rate(lambda im=images, masks=masks: masks.append(sum(map(len, seg(im)))), batch, args.seconds,
                          device)  # fmt: skip
        rows.append({
            "model": f"FastSAM-{arch}", "precision": precision, "batch": batch, "forward_images_s": forward,
            "segment_images_s": stage, "segment_over_forward": forward / stage,
            "masks_per_image": masks[-1] / batch, "gpu_busy": busy.get("share"),
        })  # fmt: skip
    return rows


def _photo(h: int, w: int, seed: int) -> np.ndarray:
    from fastsam_core.testing.synthetic import make_scene

    return make_scene(np.random.default_rng(seed), h, w, n_shapes=(20, 40))[0]


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _rate(step, batch: int, seconds: float, device) -> float:
    """Images per second of `step` (one batch each call) over about `seconds`, after one warm-up call."""
    step()
    _sync(device)
    calls, t0 = 0, time.perf_counter()
    while True:
        step()
        calls += 1
        _sync(device)
        elapsed = time.perf_counter() - t0
        if elapsed >= seconds:
            return calls * batch / elapsed


@contextlib.contextmanager
def _busy(device) -> Iterator[dict]:
    """{"share": mean utilization.gpu in [0, 1]} of the device while the block runs; None without nvidia-smi."""
    out: dict = {"share": None}
    smi = shutil.which("nvidia-smi")
    if device.type != "cuda" or smi is None:
        yield out
        return
    index = device.index or 0
    cmd = [smi, f"--id={index}", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", "-lms", "100"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    samples: list[float] = []
    reader = threading.Thread(target=lambda: samples.extend(float(v) for v in proc.stdout if v.strip()), daemon=True)
    reader.start()
    try:
        yield out
    finally:
        proc.terminate()
        proc.wait()
        reader.join(timeout=2)
        out["share"] = float(np.mean(samples)) / 100 if samples else None


def _clip_rate(device, n: int, seconds: float) -> float:
    """CLIP ViT-B/32 (random weights) crops per second through `ClipEmbedder.embed_images`."""
    import open_clip
    import torch

    from fastsam_core import ClipEmbedder
    from fastsam_core.checkpoints import sha256_file

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "clip.pt"
        torch.manual_seed(0)
        torch.save(open_clip.create_model("ViT-B-32", pretrained=None).state_dict(), path)
        emb = ClipEmbedder("ViT-B-32", path, sha256=sha256_file(path), device=device, chunk_size=256)
    rng = np.random.default_rng(0)
    crops = [rng.integers(0, 255, (160, 160, 3), np.uint8) for _ in range(min(n, 256))]
    return _rate(lambda: emb.embed_images(crops[i % len(crops)] for i in range(n)), n, seconds, device)


def _print(rows: list[dict], crops_s: float, skipped: list[str], args, h: int, w: int) -> None:
    import torch

    name = torch.cuda.get_device_name(torch.device(args.device)) if args.device.startswith("cuda") else "CPU"
    print(f"{name}: everything mode at imgsz {args.imgsz} on {h}x{w} photos, random weights; ~{args.seconds} s a cell")
    print("| model | precision | batch | forward images/s | segment images/s | segment / forward | masks/image "
          "| GPU busy |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        busy = f"{r['gpu_busy']:.0%}" if r["gpu_busy"] is not None else "-"
        rates = f"{r['forward_images_s']:.1f} | {r['segment_images_s']:.1f} | {r['segment_over_forward']:.2f}x"
        print(f"| {r['model']} | {r['precision']} | {r['batch']} | {rates} | {r['masks_per_image']:.0f} | {busy} |")
    print(f"| CLIP ViT-B/32 | {'fp16' if args.device.startswith('cuda') else 'fp32'} | 256 | crops/s: {crops_s:.0f} "
          "| | | | |")  # fmt: skip
    for s in skipped:
        print(f"skipped: {s}")


if __name__ == "__main__":
    main()
