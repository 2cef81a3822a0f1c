"""The Prefect flow `export_run`: a committed run as COCO, Label Studio or YOLO files, for deployments.

The same as `fastsam-label export` (without the Label Studio server import, which needs a token).
It is not retried: a failed export leaves a destination that is not empty, and running it again
with `force` replaces the export's files.
"""

from __future__ import annotations

from dataclasses import asdict

from prefect import flow

from schemas.job import StorageSpec
from workers.outputs.export import ExportOptions
from workers.outputs.export import export_run as export
from workers.runs.committed import MaskFilter


@flow(name="export-run", log_prints=True)
def export_run(
    run_id: str,
    output: str,
    to: str,
    dest: str,
    filters: dict | None = None,
    force: bool = False,
    ls_shape: str = "brush",
    image_root: str | None = None,
    image_url_template: str | None = None,
    storage: dict | None = None,
    layout: str = "default",
    images: str = "copy",
) -> dict:
    """Export a committed run; returns the export summary (ExportSummary as a dict).

    Args:
        run_id: the run.
        output: the job's output the run is under.
        to: "coco", "label-studio" or "yolo".
        dest: folder or s3:// prefix to write to (must be empty unless `force`).
        filters: MaskFilter fields (min_score, min_stability, min_area, labelled_only, prompts, limit).
        force: write into a destination that is not empty.
        ls_shape: Label Studio shapes: brush, polygon or both.
        image_root: Label Studio: document root of local files.
        image_url_template: Label Studio: image URL template.
        storage: StorageSpec fields (endpoint_url, region, ...).
        layout: COCO: "default" or "cvat".
        images: YOLO and COCO "cvat": "copy", "link" or "none".
    """
    keep = MaskFilter(**{k: (tuple(v) if k == "prompts" else v) for k, v in (filters or {}).items()})
    options = ExportOptions(to, dest, keep, force, ls_shape, image_root, image_url_template, layout, images)
    summary = export(output, run_id, options, StorageSpec(**(storage or {})))
    print(f"exported run {run_id} as {to}: {summary.images} images, {summary.annotations} masks -> {summary.dest}")
    return asdict(summary)
