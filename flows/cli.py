"""The `fastsam-label` command line.

`segment` labels local image files with fastsam_core directly (no object store, Ray or Prefect)
and writes one JSON line per mask: COCO RLE, XYWH box, area, score, stability and, when text
prompts are given, the similarity to each prompt and the selected label.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def _segment(args: argparse.Namespace) -> int:
    from fastsam_core import (
        TINY_CHECKPOINT,
        ClipEmbedder,
        ColorWordEmbedder,
        EverythingParams,
        FastSAMModel,
        Segmenter,
        label_instances,
        score_masks,
    )
    from workers.decode import ImageError, decode_image

    model = FastSAMModel.load(args.model or TINY_CHECKPOINT, sha256=args.sha256, allow_unpinned=args.allow_unpinned)
    params = EverythingParams(
        imgsz=args.imgsz or model.default_imgsz, conf=args.conf, iou=args.iou, max_det=args.max_det, retina=True
    )
    segment = Segmenter(model, params)
    embedder = None
    if args.prompt:
        if args.clip_arch == "color-words":
            embedder = ColorWordEmbedder()
        else:
            embedder = ClipEmbedder(args.clip_arch, args.clip_weights, sha256=args.clip_sha256)
    out = open(args.out, "w") if args.out else sys.stdout  # noqa: SIM115 - closed below unless stdout
    failures = 0
    try:
        for path in args.images:
            try:
                img = decode_image(path.read_bytes(), str(path), args.max_pixels).rgb
            except (OSError, ImageError) as e:
                failures += 1
                print(f"error: {getattr(e, 'kind', 'read_error')}: {e}", file=sys.stderr)
                continue
            batch = segment([img])[0]
            labels = None
            if embedder is not None:
                batch = score_masks(img, batch, embedder, args.prompt)
                labels = label_instances(batch, len(args.prompt), args.threshold)
            boxes = batch.bboxes_xywh()
            for i in range(len(batch)):
                row = {
                    "image": str(path),
                    "mask_id": int(batch.mask_ids[i]),
                    "segmentation": {"size": batch.rles[i]["size"], "counts": batch.rles[i]["counts"].decode()},
                    "bbox": [float(v) for v in boxes[i]],
                    "area": int(batch.areas[i]),
                    "score": float(batch.scores[i]),
                    "stability": float(batch.stability[i]),
                }
                if labels is not None:
                    lab = int(labels.label[i])
                    row["clip_scores"] = [None if np.isnan(v) else float(v) for v in batch.columns["clip_cosine"][i]]
                    row["label"] = args.prompt[lab] if lab >= 0 else None
                    row["label_score"] = None if lab < 0 else float(labels.score[i])
                out.write(json.dumps(row) + "\n")
            print(f"{path}: {len(batch)} masks", file=sys.stderr)
    finally:
        if out is not sys.stdout:
            out.close()
    return 1 if failures else 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    p = argparse.ArgumentParser(prog="fastsam-label", description="Bulk auto-labeling with FastSAM and CLIP.")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("segment", help="label local image files, one JSON line per mask")
    s.add_argument("images", nargs="+", type=Path, help="image files (JPEG, PNG, WebP, BMP, TIFF, GIF)")
    s.add_argument("--model", type=Path, help="FastSAM checkpoint (default: the shipped small model)")
    s.add_argument("--sha256", help="pinned sha256 of --model (needed unless it is a known checkpoint)")
    s.add_argument("--allow-unpinned", action="store_true", help="load an unpinned checkpoint (it is a pickle)")
    s.add_argument("--imgsz", type=int, help="model input size, a multiple of 32 (default: the model's own)")
    s.add_argument("--conf", type=float, default=0.4, help="minimum box score (default 0.4)")
    s.add_argument("--iou", type=float, default=0.9, help="NMS IoU threshold (default 0.9)")
    s.add_argument("--max-det", type=int, default=300, help="most masks per image (default 300)")
    s.add_argument("--prompt", action="append", default=[], help="a text prompt; repeat for several")
    s.add_argument("--threshold", type=float, default=0.5, help="minimum label probability (default 0.5)")
    s.add_argument(
        "--clip-arch", default="color-words", help="open_clip architecture, or color-words (offline stand-in)"
    )
    s.add_argument("--clip-weights", type=Path, help="open_clip weights file for --clip-arch")
    s.add_argument("--clip-sha256", help="pinned sha256 of --clip-weights")
    s.add_argument("--max-pixels", type=int, default=100_000_000, help="largest image decoded (default 100M)")
    s.add_argument("--out", type=Path, help="output JSON-lines file (default: standard output)")
    s.set_defaults(func=_segment)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `fastsam-label` console script."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ValueError as e:  # configuration errors: name the problem, no traceback
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
