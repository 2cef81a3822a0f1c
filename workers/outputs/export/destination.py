"""Where a staged export goes: the destination checks, the export manifest, and the copy.

Every export writes `fastsam-export-{format}.json` at the destination: the run, the options and
every file it wrote. That manifest is what `--force` trusts: an export into a destination that is
not empty replaces or removes exactly the files an earlier export of the same format wrote, and
refuses to overwrite any other file. The manifest is written first (naming the old files and the
new ones, so an interrupted export leaves nothing unowned), then the files, then the old files
that are not part of the new export are removed, then the manifest again with the new files only.
"""

from __future__ import annotations

import json
import os
import secrets
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

from schemas.errors import DestinationNotEmptyError, ExportManifestError, ObjectNotFoundError, StoreError
from workers.outputs.export.base import ExportOptions, ExportSummary, Stage
from workers.storage import LocalStore, ObjectStore, check_writable

#: Parallel uploads and image copies.
_IO_THREADS = 16


def manifest_key(to: str) -> str:
    """The export manifest's key at the destination."""
    return f"fastsam-export-{to}.json"


def previous_files(dest: ObjectStore, to: str) -> set[str]:
    """The files the destination's last export of format `to` wrote (empty when there was none).

    Raises:
        ExportManifestError: the manifest is not one of ours.
    """
    key = manifest_key(to)
    try:
        data = json.loads(dest.get(key))
        files = data["files"]
        if data.get("format") != to or not all(isinstance(f, str) for f in files):
            raise ValueError("not an export manifest of this format")
    except ObjectNotFoundError:
        return set()
    except (ValueError, KeyError, TypeError) as e:
        raise ExportManifestError(
            f"{dest.uri_of(key)} is not a readable fastsam-label export manifest ({e}); move it away, or export "
            "to another destination"
        ) from None
    return set(files)


def check_destination(dest: ObjectStore, options: ExportOptions) -> set[str]:
    """Before any work: the destination takes writes, and is empty unless `force`; the earlier export's files.

    Raises:
        DestinationNotEmptyError: the destination holds files and `force` is off.
        ExportManifestError: `force`, and the earlier export's manifest is unreadable.
        StoreError: the destination cannot be listed or written.
    """
    existing = next(iter(dest.list()), None)
    if existing is not None and not options.force:
        raise DestinationNotEmptyError(
            f"destination {dest.uri} is not empty (it holds {existing.key}); choose an empty one, or pass --force "
            f"to replace the files an earlier {options.to} export wrote there (listed in {manifest_key(options.to)}; "
            "no other file is touched)"
        )
    previous = previous_files(dest, options.to) if existing is not None else set()
    check_writable(dest, f".fastsam-probe-{secrets.token_hex(6)}", "destination")
    return previous


def check_foreign(dest: ObjectStore, stage: Stage, previous: set[str], to: str) -> None:
    """Refuse to overwrite a file at the destination that no earlier export of this format wrote.

    Raises:
        DestinationNotEmptyError: naming the file.
    """
    for obj in dest.list():
        if obj.key not in previous and stage.has(obj.key):
            raise DestinationNotEmptyError(
                f"destination {dest.uri} holds {obj.key}, which this export would overwrite and no earlier {to} "
                f"export wrote (it is not in {manifest_key(to)}); move it away, or export to another destination"
            )


def _manifest(options: ExportOptions, summary: ExportSummary, files: list[str], state: str) -> bytes:
    doc = {
        "format": options.to,
        "layout": options.layout,
        "images_mode": options.images if options.copies_images else None,
        "run_id": summary.run_id,
        "state": state,
        "written_at": datetime.now(UTC).isoformat(),
        "images": summary.images,
        "annotations": summary.annotations,
        "left_out": summary.left_out,
        "refused": summary.refused,
        "renamed": summary.renamed,
        "files": files,
    }
    return json.dumps(doc, indent=1).encode()


def publish(
    stage: Stage,
    dest: ObjectStore,
    source: ObjectStore,
    options: ExportOptions,
    summary: ExportSummary,
    previous: set[str],
) -> None:
    """Copy the staged export to the destination (see the module docstring); fills `summary.files`.

    Raises:
        DestinationNotEmptyError: the export would overwrite a file it does not own.
        StoreError: a write, or the copy of a source image, failed.
    """
    if previous or options.force:
        check_foreign(dest, stage, previous, options.to)
    new = [path for path, _ in stage.files()]
    key = manifest_key(options.to)
    dest.put(key, _manifest(options, summary, sorted(set(new) | previous), "writing"))
    link = options.images == "link"

    def one(item: tuple[str, str | None]) -> None:
        path, source_key = item
        if source_key is None:
            dest.put_file(path, stage.folder / path)
        elif link:
            _symlink(dest, source, source_key, path)
        else:
            dest.put(path, source.get(source_key))

    with ThreadPoolExecutor(_IO_THREADS, thread_name_prefix="fastsam-export") as pool:
        for _ in pool.map(one, stage.files()):
            pass
    for stale in sorted(previous - set(new) - {key}):
        dest.delete(stale)
    dest.put(key, _manifest(options, summary, new, "complete"))
    summary.files = [*new, key]


def _symlink(dest: ObjectStore, source: ObjectStore, key: str, path: str) -> None:
    """A symbolic link at `path` in a local destination to source object `key` of a local source."""
    if not (isinstance(dest, LocalStore) and isinstance(source, LocalStore)):  # checked by export_run first
        raise StoreError("--images link needs a local source and a local destination")
    target, link = source._path(key), dest._path(path)
    link.parent.mkdir(parents=True, exist_ok=True)
    tmp = link.with_name(f".fastsam-tmp-{secrets.token_hex(6)}")
    os.symlink(Path(target), tmp)
    os.replace(tmp, link)
