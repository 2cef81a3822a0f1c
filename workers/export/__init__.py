"""Exports of a committed run for the tools people use: COCO (pycocotools, CVAT, FiftyOne), Label Studio, YOLO.

`export_run` reads the run shard by shard (workers.committed), writes the format's files into a
local staging folder a record at a time (memory does not grow with the run), then copies them to
the destination (a folder or an s3:// prefix). Errored images are left out; masks pass the
`MaskFilter`. The destination must be empty unless `force`, and is checked for writing before any
work.
"""

from __future__ import annotations

import secrets
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from schemas.job import StorageSpec
from schemas.tables import ImageStatus
from workers.committed import CommittedRun, MaskFilter, NothingSelectedError
from workers.store import ObjectStore, check_writable, open_store

#: Export formats, by the name `--to` takes.
FORMATS = ("coco", "label-studio", "yolo")


class DestinationNotEmptyError(RuntimeError):
    """The destination already holds files; the message says how to go on."""


@dataclass(frozen=True)
class ExportOptions:
    """How to export.

    Attributes:
        to: one of FORMATS.
        dest: folder or s3:// prefix to write to.
        masks: which masks (and with `limit`, which images) to export.
        force: write into a destination that is not empty (the format's own files are replaced).
        ls_shape: Label Studio results: "brush", "polygon" or "both".
        image_root: Label Studio local files: the document root the `/data/local-files/?d=` paths
            are relative to (default: the source folder).
        image_url_template: Label Studio image URLs from a template with {key}, {uri} and {path}
            (the source key, the source URI, the local path), e.g. "https://cdn.example/{key}".
    """

    to: str
    dest: str
    masks: MaskFilter = field(default_factory=MaskFilter)
    force: bool = False
    ls_shape: str = "brush"
    image_root: str | None = None
    image_url_template: str | None = None

    def __post_init__(self) -> None:
        if self.to not in FORMATS:
            raise ValueError(f"--to must be one of {', '.join(FORMATS)}, but got {self.to!r}")
        if self.ls_shape not in ("brush", "polygon", "both"):
            raise ValueError(f"--ls-shape must be brush, polygon or both, but got {self.ls_shape!r}")


@dataclass
class ExportSummary:
    """What an export wrote.

    Attributes:
        run_id, to, dest: what was exported, how, where.
        images: images written (labelled images that passed the filters).
        annotations: masks written.
        left_out: masks or images not written, by reason (errored image, no polygon, ...).
        files: files written.
        seconds: wall seconds.
    """

    run_id: str
    to: str
    dest: str
    images: int = 0
    annotations: int = 0
    left_out: dict[str, int] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def count(self, reason: str, n: int = 1) -> None:
        """Record `n` things left out for `reason`."""
        if n:
            self.left_out[reason] = self.left_out.get(reason, 0) + n


def labelled_images(
    run: CommittedRun, options: ExportOptions, summary: ExportSummary
) -> Iterator[tuple[dict, list[dict]]]:
    """(image row, its masks that pass the filter) for every labelled image, in run order.

    Errored images are counted in `summary` and left out; an image whose masks were all filtered
    out comes with an empty list. One shard's rows are in memory at a time.
    """
    for shard in run.shards(options.masks):
        by_image: dict[str, list[dict]] = {}
        for m in shard.masks.to_pylist():
            by_image.setdefault(m["image_id"], []).append(m)
        for img in shard.images.to_pylist():
            if img["status"] != ImageStatus.OK:
                summary.count("errored image")
                continue
            yield img, by_image.get(img["image_id"], [])


def unlabelled_name(run: CommittedRun) -> str:
    """The label exports give masks without one: "object" (or "unlabelled" if a prompt is "object")."""
    return "unlabelled" if "object" in run.prompts else "object"


def label_names(run: CommittedRun, options: ExportOptions) -> list[str]:
    """The labels an export uses.

    The kept prompts in run order, then `unlabelled_name` for unlabelled masks unless only labelled
    masks are kept.
    """
    keep = set(options.masks.prompts) or set(run.prompts)
    names = [p for p in run.prompts if p in keep]
    return names if options.masks.labelled_only or options.masks.prompts else [*names, unlabelled_name(run)]


def _check_destination(dest: ObjectStore, options: ExportOptions, owned: tuple[str, ...]) -> None:
    existing = next(iter(dest.list()), None)
    if existing is not None and not options.force:
        raise DestinationNotEmptyError(
            f"destination {dest.uri} is not empty (it holds {existing.key}); choose an empty one, or pass --force "
            f"to replace this export's files there ({', '.join(owned)})"
        )
    check_writable(dest, f".fastsam-probe-{secrets.token_hex(6)}", "destination")


def export_run(output: str, run_id: str, options: ExportOptions, storage: StorageSpec | None = None) -> ExportSummary:
    """Export a committed run (see the module docstring).

    Raises:
        RunNotFoundError, RunNotCommittedError: the run cannot be exported (yet).
        DestinationNotEmptyError: the destination holds files and `force` is off.
        NothingSelectedError: the filters leave no mask.
        StoreError: a store cannot be reached, or the destination cannot be written.
    """
    from workers.export import coco, labelstudio, yolo

    writer = {"coco": coco, "label-studio": labelstudio, "yolo": yolo}[options.to]
    t0 = time.perf_counter()
    run = CommittedRun(open_store(output, storage), run_id)
    dest = open_store(options.dest, storage)
    _check_destination(dest, options, writer.OWNED)
    summary = ExportSummary(run_id=run_id, to=options.to, dest=dest.uri)
    with tempfile.TemporaryDirectory(prefix="fastsam-export-") as tmp:
        folder = Path(tmp)
        writer.write(run, options, folder, summary)
        if summary.annotations == 0:
            raise NothingSelectedError(
                f"no mask of run {run_id} passes the filters ({options.masks.describe()}); loosen them"
            )
        if options.force:
            for prefix in writer.OWNED:
                for obj in list(dest.list(prefix)):
                    dest.delete(obj.key)
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            key = path.relative_to(folder).as_posix()
            dest.put_file(key, path)
            summary.files.append(key)
    summary.seconds = round(time.perf_counter() - t0, 2)
    return summary
