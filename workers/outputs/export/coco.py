"""COCO instance segmentation JSON: pycocotools, CVAT ("COCO 1.0"), Datumaro and FiftyOne read it.

    images        id (1..N), file_name, width, height, coco_url (the source URI)
    annotations   id, image_id, category_id, segmentation (our COCO RLE as is), bbox (XYWH), area,
                  score, iscrowd 0, and: stability, label_score, clip_cosine (one per run prompt)
    categories    one per prompt (id = its 1-based position in the run's prompts), then
                  "unlabelled" for masks no prompt labelled (left out with --labelled-only or --prompt)

Layouts:
    default   `annotations.json`; `file_name` is the source key (a path relative to the source
              folder: FiftyOne's `data_path`, pycocotools).
    cvat      `annotations/instances_default.json` and the images under `images/default/` (copied,
              linked, or left to you with --images none), `file_name` relative to that folder: what
              CVAT's "COCO 1.0" import and Datumaro's `coco_instances` detect. A key another key's
              file name collides with (ignoring case) gets a `~digest` suffix (paths.disambiguated);
              one that needs a folder where another key's file is, is left out and named.

The images and annotations arrays are written to two scratch files as the run is read, then
joined into one document, so memory does not grow with the run.
"""

from __future__ import annotations

import json
import shutil

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

NAME = "annotations.json"
CVAT_NAME, CVAT_IMAGES = "annotations/instances_default.json", "images/default/"


def categories(run: CommittedRun, options: ExportOptions) -> tuple[list[dict], dict[str | None, int]]:
    """The categories the export uses, and the category id of each label (None: unlabelled).

    A prompt's id is its 1-based position in the run's prompts, so ids agree between exports of one
    run with different filters; the unlabelled category comes after every prompt.
    """
    other = unlabelled_name(run)
    position = {p: i + 1 for i, p in enumerate(run.prompts)} | {other: len(run.prompts) + 1}
    names = label_names(run, options)
    cats = [{"id": position[n], "name": n, "supercategory": "unlabelled" if n == other else "prompt"} for n in names]
    return cats, {(None if n == other else n): position[n] for n in names}


def _file_name(stage: Stage, key: str, summary: ExportSummary, options: ExportOptions) -> str:
    """The image's `file_name`: its key, or in the CVAT layout its free path under images/default/.

    Raises:
        PathCollisionError: CVAT layout, and another key holds every candidate path.
    """
    if options.layout != "cvat":
        return key
    candidates = [key, disambiguated(key, key)]
    chosen = candidates[stage.claims.place([[CVAT_IMAGES + c] for c in candidates], key)]
    if chosen != key and len(summary.renamed) < LISTED:
        summary.renamed.append({"key": key, "path": CVAT_IMAGES + chosen})
    if options.images != "none":
        stage.copy_image(key, CVAT_IMAGES + chosen)
        summary.image_files += 1
    return chosen


def write(run: CommittedRun, options: ExportOptions, stage: Stage, summary: ExportSummary) -> None:
    """Stage the annotation file (and in the CVAT layout, the image copies), counting into `summary`."""
    cats, cat_of = categories(run, options)
    images_part, annotations_part = stage.folder / ".images.part", stage.folder / ".annotations.part"
    with open(images_part, "w") as imgs, open(annotations_part, "w") as anns:
        for img, masks in labelled_images(run, options, summary):
            try:
                name = _file_name(stage, img["key"], summary, options)
            except PathCollisionError as e:
                summary.refuse(img["key"], "file path another key holds", str(e))
                continue
            summary.images += 1
            record = {"id": summary.images, "file_name": name, "width": img["width"], "height": img["height"]}
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
    with open(stage.path(CVAT_NAME if options.layout == "cvat" else NAME), "w") as out:
        out.write(json.dumps({"info": info, "licenses": [], "categories": cats})[:-1] + ', "images": [')
        with open(images_part) as f:
            shutil.copyfileobj(f, out)
        out.write('], "annotations": [')
        with open(annotations_part) as f:
            shutil.copyfileobj(f, out)
        out.write("]}")
    images_part.unlink()
    annotations_part.unlink()
