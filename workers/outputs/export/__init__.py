"""Exports of a committed run for the tools people use.

COCO (pycocotools, CVAT, Datumaro, FiftyOne), Label Studio (files, or a project on a server), YOLO
segmentation (ultralytics trains on it).

`export_run` reads the run shard by shard (workers.runs.committed, every file checked against the
manifest), stages the format's files in a local folder a record at a time (memory does not grow
with the run), and only then writes to the destination (workers.outputs.export.destination), so a bad
object or a collision stops the export before anything is written. Errored images are left out;
masks pass the `MaskFilter`; objects whose key cannot be a file path are left out of every format
and named (workers.outputs.export.paths).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from schemas.errors import ExportOptionsError, NothingSelectedError
from schemas.job import StorageSpec
from workers.outputs.export.base import (
    FORMATS,
    ExportOptions,
    ExportSummary,
    Stage,
    label_names,
    labelled_images,
    unlabelled_name,
)
from workers.outputs.export.destination import check_destination, publish
from workers.runs.committed import CommittedRun
from workers.storage import LocalStore, open_store

__all__ = [
    "FORMATS",
    "ExportOptions",
    "ExportSummary",
    "export_run",
    "label_names",
    "labelled_images",
    "unlabelled_name",
]


def export_run(output: str, run_id: str, options: ExportOptions, storage: StorageSpec | None = None) -> ExportSummary:
    """Export a committed run (see the module docstring).

    Raises (schemas.errors):
        RunNotFoundError, RunNotCommittedError, RunDamagedError: the run cannot be exported (yet).
        ExportOptionsError: options that do not fit the run (e.g. --images link with an S3 source).
        DestinationNotEmptyError: the destination holds files and `force` is off, or files this
            export would overwrite that no earlier export of the format wrote.
        NothingSelectedError: the filters leave no mask.
        LabelStudioError: the Label Studio server refused the project or the import.
        StoreError: a store cannot be reached, or the destination cannot be written.
    """
    from workers.outputs.export import coco, labelstudio, yolo

    writer = {"coco": coco, "label-studio": labelstudio, "yolo": yolo}[options.to]
    t0 = time.perf_counter()
    run = CommittedRun(open_store(output, storage), run_id)
    run.verify()  # a damaged run fails here, before the destination is touched
    source = open_store(
        run.manifest.job["source"]["uri"], storage or StorageSpec(**run.manifest.job.get("storage", {}))
    )
    if options.copies_images and options.images == "link" and not isinstance(source, LocalStore):
        raise ExportOptionsError(f"--images link needs a local source, but run {run_id} read {source.uri}; use copy")
    dest = open_store(options.dest, storage) if options.dest is not None else None
    if options.copies_images and options.images == "link" and not isinstance(dest, LocalStore):
        raise ExportOptionsError("--images link needs a local --dest folder; use copy for an s3:// destination")
    previous = check_destination(dest, options) if dest is not None else set()
    summary = ExportSummary(run_id=run_id, to=options.to, dest=dest.uri if dest is not None else None)
    with tempfile.TemporaryDirectory(prefix="fastsam-export-") as tmp:
        stage = Stage(Path(tmp))
        try:
            writer.write(run, options, stage, summary)
            if summary.annotations == 0:
                raise NothingSelectedError(
                    f"no mask of run {run_id} passes the filters ({options.masks.describe()}); loosen them"
                )
            if options.label_studio_url:
                from workers.outputs.export.labelstudio_api import push

                summary.label_studio = push(stage, run, options)
            if dest is not None:
                publish(stage, dest, source, options, summary, previous)
        finally:
            stage.close()
    summary.seconds = round(time.perf_counter() - t0, 2)
    return summary
