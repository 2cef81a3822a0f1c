"""COCO instance segmentation JSON (`annotations.json`): pycocotools, CVAT ("COCO 1.0") and FiftyOne read it.

    images        id (1..N), file_name (the source key), width, height, coco_url (the source URI)
    annotations   id, image_id, category_id, segmentation (our COCO RLE as is), bbox (XYWH), area,
                  score, iscrowd 0, and: stability, label_score, clip_cosine (one per run prompt)
    categories    one per prompt (id = its 1-based position in the run's prompts), then "object"
                  for unlabelled masks (left out with --labelled-only or --prompt)

The images and annotations arrays are written to two scratch files as the run is read, then
joined into one document, so memory does not grow with the run.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from workers.committed import CommittedRun
from workers.export import ExportOptions, ExportSummary, label_names, labelled_images, unlabelled_name

NAME = "annotations.json"
OWNED = (NAME,)


def categories(run: CommittedRun, options: ExportOptions) -> tuple[list[dict], dict[str | None, int]]:
    """The categories the export uses, and the category id of each label (None: unlabelled).

    A prompt's id is its 1-based position in the run's prompts, so ids agree between exports of one
    run with different filters; "object" comes after every prompt.
    """
    other = unlabelled_name(run)
    position = {p: i + 1 for i, p in enumerate(run.prompts)} | {other: len(run.prompts) + 1}
    names = label_names(run, options)
    cats = [{"id": position[n], "name": n, "supercategory": "unlabelled" if n == other else "prompt"} for n in names]
    return cats, {(None if n == other else n): position[n] for n in names}


def write(run: CommittedRun, options: ExportOptions, folder: Path, summary: ExportSummary) -> None:
    """Write `annotations.json` into `folder`, counting into `summary`."""
    cats, cat_of = categories(run, options)
    images_part, annotations_part = folder / ".images.part", folder / ".annotations.part"
    with open(images_part, "w") as imgs, open(annotations_part, "w") as anns:
        for img, masks in labelled_images(run, options, summary):
            summary.images += 1
            record = {"id": summary.images, "file_name": img["key"], "width": img["width"], "height": img["height"]}
            imgs.write(("," if summary.images > 1 else "") + json.dumps({**record, "coco_url": img["uri"]}))
            for m in masks:
                summary.annotations += 1
                record = {
                    "id": summary.annotations,
                    "image_id": summary.images,
                    "category_id": cat_of[m["label"]],
                    "segmentation": {"size": m["rle_size"], "counts": m["rle_counts"]},
                    "bbox": m["bbox"],
                    "area": m["area"],
                    "score": m["score"],
                    "iscrowd": 0,
                    "stability": m["stability"],
                    "label_score": m["label_score"],
                    "clip_cosine": m["clip_cosine"],
                }
                anns.write(("," if summary.annotations > 1 else "") + json.dumps(record))
    info = {
        "description": f"fastsam-label run {run.layout.run_id}",
        "version": run.manifest.code_version,
        "date_created": run.manifest.finished_at.isoformat(),
        "models": run.manifest.models,
        "prompts": run.manifest.prompts,
    }
    with open(folder / NAME, "w") as out:
        out.write(json.dumps({"info": info, "licenses": [], "categories": cats})[:-1] + ', "images": [')
        with open(images_part) as f:
            shutil.copyfileobj(f, out)
        out.write('], "annotations": [')
        with open(annotations_part) as f:
            shutil.copyfileobj(f, out)
        out.write("]}")
    images_part.unlink()
    annotations_part.unlink()
