"""Train the small offline FastSAM-architecture model on synthetic shapes.

FastSAM is a one-class YOLOv8-seg network. This script trains the same architecture at the
smallest scale ("n") on scenes from `fastsam_core.testing.synthetic`, on the CPU, with nothing downloaded,
then measures mask mAP50 on held-out scenes with ultralytics' own validator and writes the
checkpoint in ultralytics' format. Remake the committed checkpoint with:

    python -m tools.train_tiny --out fastsam_core/weights/fastsam-tiny.pt

and put the printed sha256 and size into `fastsam_core.checkpoints.KNOWN_CHECKPOINTS`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from pathlib import Path

import cv2
import numpy as np

from fastsam_core.testing.synthetic import make_scene, mask_to_polygon

TRAIN_IMGSZ = 160


def write_dataset(root: Path, n_train: int, n_val: int, size: int, seed: int) -> Path:
    """Write a YOLO segmentation dataset (images, polygon labels, data.yaml); return the yaml path."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("val", n_val)):
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "labels" / split).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            img, shapes = make_scene(rng, size, size)
            cv2.imwrite(str(root / "images" / split / f"{i:05d}.png"), img[..., ::-1])
            lines = []
            for s in shapes:
                poly = mask_to_polygon(s.mask)
                if poly is None:
                    continue
                xy = (poly / [size, size]).clip(0, 1).ravel()
                lines.append("0 " + " ".join(f"{v:.5f}" for v in xy))
            (root / "labels" / split / f"{i:05d}.txt").write_text("\n".join(lines))
    yaml = root / "data.yaml"
    yaml.write_text(f"path: {root}\ntrain: images/train\nval: images/val\nnames:\n  0: object\n")
    return yaml


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point; see the module docstring."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("fastsam_core/weights/fastsam-tiny.pt"))
    p.add_argument("--epochs", type=int, default=45)
    p.add_argument("--n-train", type=int, default=320)
    p.add_argument("--n-val", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--min-map50", type=float, default=0.7, help="fail when held-out mask mAP50 is below this")
    args = p.parse_args(argv)

    os.environ.setdefault("YOLO_OFFLINE", "1")
    from ultralytics import YOLO

    from fastsam_core.checkpoints import sha256_file

    work = Path(tempfile.mkdtemp(prefix="fastsam-tiny-"))
    try:
        data = write_dataset(work / "data", args.n_train, args.n_val, TRAIN_IMGSZ, args.seed)
        model = YOLO("yolov8n-seg.yaml", task="segment")
        model.train(
            data=str(data), epochs=args.epochs, imgsz=TRAIN_IMGSZ, batch=16, device="cpu", workers=2,
            project=str(work / "runs"), name="train", plots=False, val=False, amp=False, seed=args.seed,
            deterministic=True, verbose=False, exist_ok=True,
        )  # fmt: skip
        last = work / "runs" / "train" / "weights" / "last.pt"
        metrics = YOLO(str(last)).val(
            data=str(data), split="val", imgsz=TRAIN_IMGSZ, device="cpu", plots=False, batch=16,
            project=str(work / "runs"), name="val", verbose=False,
        )  # fmt: skip
        map50 = float(metrics.seg.map50)
        print(f"held-out mask mAP50: {map50:.3f} (box mAP50 {float(metrics.box.map50):.3f})")
        args.out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(last, args.out)
        print(f"wrote {args.out}: {args.out.stat().st_size} bytes, sha256 {sha256_file(args.out)}")
        if map50 < args.min_map50:
            raise SystemExit(f"mask mAP50 {map50:.3f} is below the required {args.min_map50}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
