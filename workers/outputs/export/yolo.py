"""YOLO segmentation dataset that ultralytics trains on as it is: `data.yaml`, `images/`, `labels/`.

    data.yaml        train and val: images (the folder beside it), nc, names; no `path`, so
                     ultralytics takes the folder data.yaml is in: `yolo segment train data=DEST/data.yaml`
    images/<key>     each labelled image, copied from the source (--images copy, the default),
                     a symbolic link to it (--images link: local source and destination), or not
                     written (--images none: put the images there yourself; the manifest lists where)
    labels/<key>.txt one line per mask, `class x1 y1 x2 y2 ...`: the largest outer contour of the
                     mask (OpenCV), normalised by the image's width and height; an image without
                     masks gets an empty file (a background image)

ultralytics finds an image's label file by replacing the last `/images/` of its path with
`/labels/` and its extension with `.txt`, so paths are chosen for that rule: the key's folders are
kept, a folder named `images` inside a key becomes `_images`, and a key whose label file another
key took (`a.jpg` and `a.png` both want `a.txt`; `A.jpg` and `a.jpg` on a case-insensitive file
system) gets a `~digest` suffix (paths.disambiguated) and is listed in the summary and manifest;
one that needs a folder where another key's file is (`x.txt/y.jpg` beside `x.jpg`) is left out,
counted and named with the other key.
Images in a format ultralytics does not read (GIF) are left out and counted. Classes: the kept
prompts in run order, then "unlabelled" unless only labelled masks are kept.
"""

from __future__ import annotations

from pathlib import PurePosixPath

import numpy as np
import yaml
from pycocotools import mask as mask_utils

from fastsam_core.formats import largest_polygon
from schemas.errors import PathCollisionError
from workers.outputs.export.base import (
    LISTED,
    ExportOptions,
    ExportSummary,
    Stage,
    label_names,
    labelled_images,
    unlabelled_name,
)
from workers.outputs.export.paths import disambiguated
from workers.runs.committed import CommittedRun

IMAGES, LABELS, DATA = "images/", "labels/", "data.yaml"
#: Image suffixes ultralytics loads (ultralytics.data.utils.IMG_FORMATS), lower case.
TRAINABLE = frozenset({"avif", "bmp", "dng", "heic", "heif", "jp2", "jpeg", "jpg", "mpo", "png", "tif", "tiff", "webp"})


def dataset_path(key: str) -> str:
    """The image's path under images/ and labels/ before collisions: the key, `images` folders renamed."""
    parts = key.split("/")
    return "/".join([*("_images" if p == "images" else p for p in parts[:-1]), parts[-1]])


def label_path(image: str) -> str:
    """labels/<image path with .txt for its extension>, as ultralytics' img2label_paths derives it."""
    return LABELS + str(PurePosixPath(image).with_suffix(".txt"))


def place(stage: Stage, key: str, summary: ExportSummary) -> str:
    """Claim the image's path (and its label file's) for `key`; the path under images/.

    Raises:
        PathCollisionError: another key holds every candidate (a file where this key needs a folder).
    """
    natural = dataset_path(key)
    candidates = [natural, disambiguated(natural, key)]
    chosen = candidates[stage.claims.place([[IMAGES + c, label_path(c)] for c in candidates], key)]
    if chosen != key and len(summary.renamed) < LISTED:
        summary.renamed.append({"key": key, "path": IMAGES + chosen})
    return chosen


def write(run: CommittedRun, options: ExportOptions, stage: Stage, summary: ExportSummary) -> None:
    """Stage label files, image copies and `data.yaml`, counting into `summary`."""
    names, other = label_names(run, options), unlabelled_name(run)
    class_of = {n: i for i, n in enumerate(names)}
    for img, masks in labelled_images(run, options, summary):
        suffix = PurePosixPath(img["key"]).suffix.lower().lstrip(".")
        if suffix not in TRAINABLE:
            summary.refuse(img["key"], "image format ultralytics does not train on", f".{suffix} images are not read")
            continue
        try:
            path = place(stage, img["key"], summary)
        except PathCollisionError as e:
            summary.refuse(img["key"], "file path another key holds", str(e))
            continue
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
        stage.path(label_path(path)).write_text("".join(line + "\n" for line in lines))
        if options.images != "none":
            stage.copy_image(img["key"], IMAGES + path)
            summary.image_files += 1
        summary.images += 1
    data = {"train": "images", "val": "images", "nc": len(names), "names": dict(enumerate(names))}
    stage.path(DATA).write_text(yaml.safe_dump(data, sort_keys=False))
