"""What every export format shares: its options, its summary, the run's labelled images, and the staging folder.

A format's writer walks `labelled_images` and writes its files into a `Stage`: a local folder whose
files become the export, plus an SQLite database recording which key holds which path
(`paths.PathClaims`), which source images are to be copied into the export, and which objects
were left out and why. Nothing reaches the destination until the whole export is staged
(workers.outputs.export.destination).
"""

from __future__ import annotations

import sqlite3
import string
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from schemas.errors import ExportOptionsError, UnsafeKeyError
from schemas.job import UNLABELLED
from schemas.tables import ImageStatus
from workers.outputs.export.paths import PathClaims
from workers.runs.committed import CommittedRun, MaskFilter
from workers.storage import display_key
from workers.storage.keys import relative_path

#: Export formats, by the name `--to` takes.
FORMATS = ("coco", "label-studio", "yolo")
#: COCO layouts: "default" (annotations.json) or "cvat" (CVAT's and Datumaro's COCO 1.0 folders).
COCO_LAYOUTS = ("default", "cvat")
#: How image files reach a YOLO or CVAT export: copied, symbolic links (local source and destination), or not.
IMAGE_MODES = ("copy", "link", "none")
#: Fields an --image-url-template may use.
URL_FIELDS = ("key", "uri", "path")
#: Refused or renamed objects named one by one in a summary and an export manifest (the rest are counted).
LISTED = 1000


@dataclass(frozen=True)
class ExportOptions:
    """How to export.

    Attributes:
        to: one of FORMATS.
        dest: folder or s3:// prefix to write to; None only when pushing to a Label Studio server.
        masks: which masks (and with `limit`, which images) to export.
        force: write into a destination that is not empty: files an earlier export of this format
            wrote there are replaced or removed; nothing else is touched.
        ls_shape: Label Studio results: "brush", "polygon" or "both".
        image_root: Label Studio local files: the document root the `/data/local-files/?d=` paths
            are relative to (Label Studio's LOCAL_FILES_DOCUMENT_ROOT; default: the source folder).
        image_url_template: Label Studio image URLs from a template with {key}, {uri} and {path}
            (the source key, the source URI, the local path), e.g. "https://cdn.example/{key}".
        layout: COCO only: "default" or "cvat" (see COCO_LAYOUTS).
        images: YOLO and COCO "cvat": one of IMAGE_MODES.
        label_studio_url: Label Studio only: a server to create the project on and import into.
        project: Label Studio only: the project's title on that server.
    """

    to: str
    dest: str | None
    masks: MaskFilter = field(default_factory=MaskFilter)
    force: bool = False
    ls_shape: str = "brush"
    image_root: str | None = None
    image_url_template: str | None = None
    layout: str = "default"
    images: str = "copy"
    label_studio_url: str | None = None
    project: str | None = None

    def __post_init__(self) -> None:
        def refuse(message: str) -> None:
            raise ExportOptionsError(message)

        if self.to not in FORMATS:
            refuse(f"--to must be one of {', '.join(FORMATS)}, but got {self.to!r}")
        if self.ls_shape not in ("brush", "polygon", "both"):
            refuse(f"--ls-shape must be brush, polygon or both, but got {self.ls_shape!r}")
        if self.layout not in COCO_LAYOUTS:
            refuse(f"--layout must be one of {', '.join(COCO_LAYOUTS)}, but got {self.layout!r}")
        if self.layout != "default" and self.to != "coco":
            refuse(f"--layout {self.layout} is a COCO layout; use it with --to coco")
        if self.images not in IMAGE_MODES:
            refuse(f"--images must be one of {', '.join(IMAGE_MODES)}, but got {self.images!r}")
        if (self.label_studio_url or self.project) and self.to != "label-studio":
            refuse("--label-studio-url and --project go with --to label-studio")
        if bool(self.label_studio_url) != bool(self.project):
            refuse("--label-studio-url and --project go together: the server, and the project to create on it")
        if self.dest is None and not self.label_studio_url:
            refuse("--dest is required (a folder or s3:// prefix), unless the export goes to --label-studio-url")
        if self.image_url_template is not None:
            check_url_template(self.image_url_template)

    @property
    def copies_images(self) -> bool:
        """Whether the export holds image files (YOLO, COCO in the CVAT layout) and they are copied or linked."""
        return (self.to == "yolo" or self.layout == "cvat") and self.images != "none"


def check_url_template(template: str) -> None:
    """Refuse a template that names anything but URL_FIELDS (or does not parse).

    Raises:
        ExportOptionsError: naming the template, what is wrong, and the allowed fields.
    """
    allowed = ", ".join("{" + f + "}" for f in URL_FIELDS)
    try:
        names = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
        unknown = [n for n in names if n not in URL_FIELDS]
        if not unknown:
            template.format(**dict.fromkeys(URL_FIELDS, "x"))
    except (ValueError, KeyError, IndexError, AttributeError) as e:
        raise ExportOptionsError(f"--image-url-template {template!r} does not parse ({e}); use {allowed}") from None
    if unknown:
        raise ExportOptionsError(
            f"--image-url-template {template!r} uses {{{unknown[0]}}}; the fields are {allowed}, e.g. "
            "https://cdn.example/{key}"
        )


@dataclass
class ExportSummary:
    """What an export wrote.

    Attributes:
        run_id, to, dest: what was exported, how, where.
        images: images written (labelled images that passed the filters).
        annotations: masks written.
        left_out: masks or images not written, by reason (errored image, unsafe key, no polygon, ...).
        refused: the first LISTED objects left out for their key or format: {"key", "why"}.
        renamed: images whose natural file name another key took, and the name they got (first LISTED):
            {"key", "path"}.
        image_files: image files copied or linked into the export.
        files: files written (label, annotation and image files; the export manifest last).
        seconds: wall seconds.
        label_studio: the Label Studio project the export was imported into, when there was one.
    """

    run_id: str
    to: str
    dest: str | None
    images: int = 0
    annotations: int = 0
    left_out: dict[str, int] = field(default_factory=dict)
    refused: list[dict] = field(default_factory=list)
    renamed: list[dict] = field(default_factory=list)
    image_files: int = 0
    files: list[str] = field(default_factory=list)
    seconds: float = 0.0
    label_studio: dict | None = None

    def count(self, reason: str, n: int = 1) -> None:
        """Record `n` things left out for `reason`."""
        if n:
            self.left_out[reason] = self.left_out.get(reason, 0) + n

    def refuse(self, key: str, reason: str, why: str) -> None:
        """Leave an object out for its key or format: counted under `reason`, listed with `why`."""
        self.count(reason)
        if len(self.refused) < LISTED:
            self.refused.append({"key": display_key(key), "why": why})


def labelled_images(run: CommittedRun, options: ExportOptions, summary: ExportSummary) -> Iterator[tuple[dict, list]]:
    """(image row, its masks that pass the filter) for every labelled image, in run order.

    Errored images are counted in `summary` and left out; so are images whose key cannot be a path
    (`workers.storage.keys.relative_path`), in every format, so that one run exports the same images everywhere.
    An image whose masks were all filtered out comes with an empty list. One shard's rows are in
    memory at a time.
    """
    for shard in run.shards(options.masks):
        by_image: dict[str, list[dict]] = {}
        for m in shard.masks.to_pylist():
            by_image.setdefault(m["image_id"], []).append(m)
        for img in shard.images.to_pylist():
            if img["status"] != ImageStatus.OK:
                summary.count("errored image")
                continue
            try:
                relative_path(img["key"])
            except UnsafeKeyError as e:
                summary.refuse(img["key"], "key that cannot be a file path", str(e))
                continue
            yield img, by_image.get(img["image_id"], [])


def unlabelled_name(run: CommittedRun) -> str:
    """The category of masks no prompt labelled: `schemas.job.UNLABELLED`, which jobs refuse as a prompt.

    A run committed before that rule may have such a prompt: then "unlabelled-2" (or the next number
    no prompt takes), so the catch-all never merges with a prompt's category (names compared ignoring case).
    """
    taken = {p.casefold() for p in run.prompts}
    name, n = UNLABELLED, 1
    while name.casefold() in taken:
        n += 1
        name = f"{UNLABELLED}-{n}"
    return name


def label_names(run: CommittedRun, options: ExportOptions) -> list[str]:
    """The labels an export uses.

    The kept prompts in run order, then `unlabelled_name` for unlabelled masks unless only labelled
    masks are kept.
    """
    keep = set(options.masks.prompts) or set(run.prompts)
    names = [p for p in run.prompts if p in keep]
    return names if options.masks.labelled_only or options.masks.prompts else [*names, unlabelled_name(run)]


class Stage:
    """An export being staged in a local folder.

    Files written under `folder` (through `path`) become the export's files; `copy_image` records a
    source image to copy (or link) into it; `claims` records which key holds which path. Its own
    bookkeeping (`.stage.sqlite`) is not part of the export.
    """

    DB = ".stage.sqlite"

    def __init__(self, folder: Path):
        self.folder = folder
        self.db = sqlite3.connect(folder / self.DB)
        self.db.execute("CREATE TABLE files (path TEXT PRIMARY KEY, source_key TEXT)")
        self.claims = PathClaims(self.db)

    def path(self, rel: str) -> Path:
        """The staging path of export file `rel` (its folder made), recorded as one of the export's files."""
        self.db.execute("INSERT OR REPLACE INTO files VALUES (?, NULL)", (rel,))
        target = self.folder / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        return target

    def copy_image(self, key: str, rel: str) -> None:
        """Record that source object `key` goes to export file `rel`."""
        self.db.execute("INSERT INTO files VALUES (?, ?)", (rel, key))

    def files(self) -> Iterator[tuple[str, str | None]]:
        """(export path, source key or None for a staged file), in path order."""
        yield from self.db.execute("SELECT path, source_key FROM files ORDER BY path")

    def has(self, rel: str) -> bool:
        """Whether `rel` is one of the export's files."""
        return self.db.execute("SELECT 1 FROM files WHERE path = ?", (rel,)).fetchone() is not None

    def count(self) -> int:
        """Files in the export."""
        return self.db.execute("SELECT COUNT(*) FROM files").fetchone()[0]

    def close(self) -> None:
        """Close the bookkeeping database."""
        self.db.close()
