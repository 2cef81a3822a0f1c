"""YOLO segmentation labels: `labels/<key>.txt`, `data.yaml`, and `images.txt` listing the source URIs.

One line per mask: `class x1 y1 x2 y2 ...`, the largest outer contour of the mask (OpenCV),
normalised by the image's width and height. Label files keep the source key's folders (with the
extension replaced by .txt), so images with one name in two folders do not collide; put each image
at `images/<key>` beside `labels/` and ultralytics pairs them. Classes: the kept prompts in run
order, then "object" for unlabelled masks unless only labelled ones are kept. Images with no mask
get an empty label file (a background image).
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

import numpy as np
import yaml
from pycocotools import mask as mask_utils

from fastsam_core.formats import largest_polygon
from workers.committed import CommittedRun
from workers.export import ExportOptions, ExportSummary, label_names, labelled_images, unlabelled_name

LABELS, DATA, IMAGES = "labels/", "data.yaml", "images.txt"
OWNED = (LABELS, DATA, IMAGES)


def label_path(key: str) -> str:
    """labels/<key with .txt for its extension>."""
    return LABELS + PurePosixPath(key).with_suffix(".txt").as_posix()


def write(run: CommittedRun, options: ExportOptions, folder: Path, summary: ExportSummary) -> None:
    """Write the label files, `data.yaml` and `images.txt` into `folder`, counting into `summary`."""
    names, other = label_names(run, options), unlabelled_name(run)
    class_of = {n: i for i, n in enumerate(names)}
    with open(folder / IMAGES, "w") as listing:
        for img, masks in labelled_images(run, options, summary):
            size = np.array([img["width"], img["height"]], np.float64)
            lines = []
            for m in masks:
                dense = mask_utils.decode({"size": m["rle_size"], "counts": m["rle_counts"].encode()})
                points = largest_polygon(dense)
                if len(points) < 3:
                    summary.count("mask without a polygon (too thin or small)")
                    continue
                xy = " ".join(f"{v:.6f}" for v in (points / size).reshape(-1))
                lines.append(f"{class_of[m['label'] or other]} {xy}")
                summary.annotations += 1
            path = folder / label_path(img["key"])
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("".join(line + "\n" for line in lines))
            listing.write(img["uri"] + "\n")
            summary.images += 1
    data = {"path": ".", "train": IMAGES, "val": IMAGES, "nc": len(names), "names": dict(enumerate(names))}
    (folder / DATA).write_text(yaml.safe_dump(data, sort_keys=False))
