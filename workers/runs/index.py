"""The incremental index: which source objects (URI and ETag) the committed runs under an output labelled, and how.

    index/part-{run_id}.parquet   written by a run's commit, just before its _SUCCESS (INDEX_SCHEMA)
    index/base-{run_id}.parquet   a compaction: parts and bases merged by the commit of `run_id`

A part counts only once its run's `_SUCCESS` exists (a commit that died between the two did not
happen). When a commit finds more than `COMPACT_AT` files, it merges the ones that count into one
base and deletes them; a planner reading at the same time may see both copies (harmless) or find a
file gone (it lists again). Planning an incremental run reads this one dataset, not the images
tables of every earlier run.

Every file is sorted by URI (`workers.runs.index_files`): parts are sorted and bases merged out of
core by DuckDB, and a planner downloads the files (`local_copy`) and reads only the row groups of
each chunk's URI range (`index_files.RangeReader`), so neither a commit nor a planner holds the
index in memory, however many objects it names.

Each row carries the *labelling fingerprint* of the run that labelled the object
(`schemas.fingerprint.labelling_id`: model, CLIP, prompts, selection). `classify` sorts a listing
into unchanged (same URI, ETag and labelling), labelled by another labelling fingerprint, changed
(the URI was labelled, at another ETag) and new, with one `is_in` each over joined keys.

Matching is on the URI, which carries the source prefix, so a copy of a bucket is new; an object
whose ETag is unknown never matches, so it is labelled. Objects whose status may pass on a later
try (`ImageStatus.retry_later`) are not indexed.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from schemas.errors import ObjectNotFoundError, SchemaVersionError, StoreUnavailableError, TableError
from schemas.fingerprint import labelling_id
from schemas.layout import INDEX, RUNS, RunLayout, index_base_key, index_part_key, parse_index_key, run_of
from schemas.manifest import Plan
from schemas.tables import INDEX_SCHEMA, ImageStatus, check_table
from workers.runs import index_files
from workers.storage import ObjectStore
from workers.storage.files import load_document

log = logging.getLogger(__name__)

#: Index files that trigger a compaction at commit.
COMPACT_AT = 16

#: Statuses an incremental run tries again. A list, not an array: pa.array of Python objects at
#: import would import pandas (0.3 s of every CLI run before Ray starts), as would an empty table.
_RETRY_LATER = [s.value for s in ImageStatus if s.retry_later]


#: `classify`'s kinds of listed object.
UNCHANGED, NEW, CHANGED, RELABEL = 0, 1, 2, 3


def rows_of(images: pa.Table, run_id: str, labelling: str) -> pa.Table:
    """The index rows of a run's images table: objects labelled for good, with a known ETag.

    Args:
        images: IMAGES_SCHEMA rows.
        run_id: the run that made them.
        labelling: its labelling fingerprint id (`schemas.fingerprint.labelling_id`).
    """
    retry = pc.is_in(images["status"], value_set=pa.array(_RETRY_LATER, pa.string()))
    keep = pc.and_(pc.invert(retry), pc.is_valid(images["etag"]))
    t = images.filter(keep)
    n = t.num_rows
    return pa.table(
        {"uri": t["uri"], "etag": t["etag"], "run_id": pa.array([run_id] * n, pa.string()),
         "labelling": pa.array([labelling] * n, pa.string())},
        schema=INDEX_SCHEMA,
    )  # fmt: skip


def _labelling_of(output: ObjectStore, run_id: str) -> str:
    """The labelling fingerprint id of a committed run, from its plan ("" when it has none)."""
    plan = load_document(output, RunLayout(run_id).plan, Plan, "run plan")
    return labelling_id(plan.fingerprint) if plan is not None else ""


def _complete(output: ObjectStore, t: pa.Table) -> pa.Table:
    """An index file's rows in INDEX_SCHEMA; files from before the labelling column get it from their runs' plans."""
    if "labelling" in t.column_names:
        return t.select(INDEX_SCHEMA.names).cast(INDEX_SCHEMA)
    runs = pc.unique(t["run_id"]).to_pylist()
    ids = pa.array([_labelling_of(output, r) for r in runs], pa.string())
    filled = pc.take(ids, pc.index_in(t["run_id"], value_set=pa.array(runs, pa.string())))
    return pa.table({**{n: t[n] for n in ("uri", "etag", "run_id")}, "labelling": filled}, schema=INDEX_SCHEMA)


def _counted(output: ObjectStore) -> list[str]:
    """Index files that count: every base, and parts whose run is committed."""
    keys = []
    for obj in output.list(INDEX):
        parsed = parse_index_key(obj.key)
        if parsed is None:
            continue
        kind, run_id = parsed
        if kind == "base" or output.head(RunLayout(run_id).success) is not None:
            keys.append(obj.key)
    return keys


def committed_runs(output: ObjectStore) -> list[str]:
    """Runs with a _SUCCESS marker (one listing of runs/)."""
    return sorted({run_of(o.key) for o in output.list(RUNS) if o.key.endswith("/_SUCCESS")} - {None})


def _write_legacy(output: ObjectStore, dest: Path, exclude: str | None = None) -> int:
    """Index rows rebuilt from the images tables of committed runs (outputs written before the index), into `dest`.

    Only the files each run's manifest names are read, each checked against it (workers.runs.committed),
    one images table at a time. Returns the rows written (unsorted).
    """
    from workers.runs.committed import CommittedRun  # it reads runs through workers.runs, which uses this module

    rows = 0
    with pq.ParquetWriter(dest, INDEX_SCHEMA, compression="zstd") as writer:
        for run_id in committed_runs(output):
            if run_id == exclude:
                continue
            run = CommittedRun(output, run_id)
            lid = labelling_id(run.manifest.fingerprint)
            for state in run.states:
                t = rows_of(run.table("images", state), run_id, lid)
                writer.write_table(t)
                rows += t.num_rows
    return rows


def _normalised(output: ObjectStore, key: str, path: Path, folder: Path) -> Path:
    """A downloaded index file as `write_sorted` writes it: checked, with the labelling column, sorted by URI.

    Raises:
        TableError: it is not a readable index file.
    """
    try:
        schema = pq.read_schema(path)
        check_table(schema, "index")
        if "labelling" in schema.names and index_files.is_sorted(path):
            return path
        if "labelling" not in schema.names:  # written before the column: filled from the runs' plans
            pq.write_table(_complete(output, pq.read_table(path)), path, compression="zstd")
    except (pa.ArrowException, OSError, SchemaVersionError) as e:
        raise TableError(f"{output.uri_of(key)} is not a readable index table ({e})") from None
    out = path.with_name(path.stem + "-sorted.parquet")
    index_files.write_sorted([path], out, _spill(folder))
    path.unlink()
    return out


def _spill(folder: Path) -> Path:
    spill = folder / "spill"
    spill.mkdir(exist_ok=True)
    return spill


def local_copy(output: ObjectStore, folder: Path) -> list[Path]:
    """The index files that count under `output`, downloaded into `folder`, each sorted by URI (`index_files`).

    An output with committed runs but no index files gets one file rebuilt from their images tables.
    Streamed to disk: memory does not grow with the index.
    """
    for attempt in range(3):
        here = folder / f"copy-{attempt}"
        here.mkdir()
        keys = _counted(output)
        if not keys:
            rebuilt = here / "legacy.parquet"
            if not _write_legacy(output, rebuilt):
                return []
            return [_normalised(output, "(rebuilt from committed runs)", rebuilt, here)]
        paths = []
        try:
            for i, key in enumerate(keys):
                paths.append(here / f"{i}.parquet")
                output.download(key, paths[-1])
        except ObjectNotFoundError:  # compacted away while we read: list again
            shutil.rmtree(here, ignore_errors=True)
            continue
        return [_normalised(output, key, path, here) for key, path in zip(keys, paths, strict=True)]
    raise StoreUnavailableError(f"the index under {output.uri_of(INDEX)} kept changing while it was read; try again")


def load(output: ObjectStore) -> pa.Table:
    """Every (uri, etag, run_id, labelling) the committed runs under `output` labelled (duplicates possible).

    All of it in memory: for tools and tests. A planner reads the index by range (`index_files.RangeReader`).
    """
    with tempfile.TemporaryDirectory(prefix="fastsam-index-") as tmp:
        files = local_copy(output, Path(tmp))
        return pa.concat_tables([INDEX_SCHEMA.empty_table(), *(pq.read_table(p).cast(INDEX_SCHEMA) for p in files)])


def uris(source: ObjectStore, keys: pa.ChunkedArray | pa.Array, chunk: int = 100_000) -> pa.ChunkedArray:
    """source.uri_of(key) for every key, built a chunk at a time (no list of a million strings)."""
    parts = []
    for start in range(0, len(keys), chunk):
        parts.append(pa.array([source.uri_of(k) for k in keys.slice(start, chunk).to_pylist()], pa.string()))
    return pa.chunked_array(parts, pa.string())


def _joined(*columns: pa.ChunkedArray) -> pa.ChunkedArray:
    """One string per row joining the columns; null where any is null. A newline is in no URI, ETag or id."""
    return pc.binary_join_element_wise(*(c.cast(pa.string()) for c in columns), "\n")


def classify(listing: pa.Table, index: pa.Table, labelling: str | None) -> pa.ChunkedArray:
    """(N,) int8 over `listing` (columns uri, etag): UNCHANGED, NEW, CHANGED or RELABEL per object.

    UNCHANGED: an index row has the same URI and ETag, and (unless `labelling` is None) the same
    labelling fingerprint. RELABEL: the same URI and ETag, labelled under another fingerprint only.
    CHANGED: the URI is indexed with other ETags only. NEW: the URI is not indexed. An object whose
    ETag is unknown never matches its ETag (CHANGED or NEW).

    One `is_in` of (URI, ETag) keys against the index rows of this fingerprint settles the usual
    night (almost everything unchanged); only the objects it does not match are looked up further.

    Args:
        listing: the objects to plan.
        index: `load`'s rows.
        labelling: the planning job's labelling fingerprint id; None = match on URI and ETag only.
    """
    n = listing.num_rows
    if n == 0:
        return pa.chunked_array([pa.array([], pa.int8())])
    etag = index["etag"]
    if labelling is not None:  # other fingerprints' rows get a null key (no copy of the index)
        etag = pc.if_else(pc.equal(index["labelling"], labelling), etag, pa.scalar(None, pa.string()))
    mine = _joined(index["uri"], etag).combine_chunks()
    del etag
    keys = _joined(listing["uri"], listing["etag"])
    unchanged = pc.fill_null(pc.is_in(keys, value_set=mine, skip_nulls=True), False)
    del mine
    rest = pc.indices_nonzero(pc.invert(unchanged))  # the few objects the index of this fingerprint lacks
    kind = np.full(n, UNCHANGED, np.int8)
    if len(rest):  # their index rows, found by probing the index with their URIs (no set of the whole index)
        uri = pc.take(listing["uri"], rest)
        near = index.filter(pc.is_in(index["uri"], value_set=uri.combine_chunks()))
        known = pc.is_in(uri, value_set=near["uri"].combine_chunks()).to_numpy(zero_copy_only=False)
        same = pc.is_in(pc.take(keys, rest), value_set=_joined(near["uri"], near["etag"]).combine_chunks())
        same_bytes = pc.fill_null(same, False).to_numpy(zero_copy_only=False)
        kind[rest.to_numpy()] = np.where(same_bytes, RELABEL, np.where(known, CHANGED, NEW))
    return pa.chunked_array([pa.array(kind, pa.int8())])


def labelled_by(index: pa.Table, listing: pa.Table, labelling: str) -> list[str]:
    """Runs that labelled the listed objects under another labelling fingerprint: the latest run of each fingerprint."""
    if listing.num_rows == 0:
        return []
    rows = index.filter(pc.is_in(_joined(index["uri"], index["etag"]), value_set=_joined(
        listing["uri"], listing["etag"]).combine_chunks()))  # fmt: skip
    rows = rows.filter(pc.not_equal(rows["labelling"], labelling))
    latest = rows.group_by("labelling").aggregate([("run_id", "max")])
    return sorted(latest["run_id_max"].to_pylist())


class PartWriter:
    """A run's index part, written as its images tables stream past (one table in memory at a time).

    Rows go to a local Parquet file; `close` puts it at `index/part-{run_id}.parquet` and compacts
    when files have gathered. The first commit under an output that has committed runs but no index
    also writes a base rebuilt from those runs' images tables, so the index is complete from then on.

    Args:
        output: the job's output store.
        run_id: the run about to commit.
        labelling: its labelling fingerprint id (`schemas.fingerprint.labelling_id`).
    """

    def __init__(self, output: ObjectStore, run_id: str, labelling: str):
        self.output, self.run_id, self.labelling = output, run_id, labelling
        self._dir = tempfile.TemporaryDirectory(prefix="fastsam-index-")
        self._path = Path(self._dir.name) / "part.parquet"
        self._writer = pq.ParquetWriter(self._path, INDEX_SCHEMA, compression="zstd")

    def add(self, images: pa.Table) -> None:
        """Index one images table's rows (see `rows_of`)."""
        self._writer.write_table(rows_of(images, self.run_id, self.labelling))

    def close(self) -> None:
        """Put the part, sorted by URI (and a legacy base first, if needed); compact when files have gathered."""
        self._writer.close()
        folder = Path(self._dir.name)
        try:
            before = _counted(self.output)
            if not before:
                rebuilt = folder / "legacy.parquet"
                rows = _write_legacy(self.output, rebuilt, exclude=self.run_id)
                if rows:
                    index_files.write_sorted([rebuilt], folder / "base.parquet", _spill(folder))
                    self.output.put_file(index_base_key(self.run_id), folder / "base.parquet")
                    log.info("index: %d objects of earlier runs indexed under %s", rows, self.output.uri_of(INDEX))
            index_files.write_sorted([self._path], folder / "sorted.parquet", _spill(folder))
            self.output.put_file(index_part_key(self.run_id), folder / "sorted.parquet")
            if len(before) >= COMPACT_AT:
                compact(self.output, self.run_id, before)
        finally:
            self._dir.cleanup()


def add_run(output: ObjectStore, run_id: str, images: list[pa.Table], labelling: str) -> None:
    """Write the index part of a run about to commit from its images tables (see `PartWriter`)."""
    writer = PartWriter(output, run_id, labelling)
    for t in images:
        writer.add(t)
    writer.close()


def compact(output: ObjectStore, run_id: str, keys: list[str]) -> None:
    """Merge counted index files into `index/base-{run_id}.parquet` (one row per uri, etag and labelling), delete them.

    Merged out of core from local copies (`index_files.write_sorted`): memory does not grow with the index.
    """
    with tempfile.TemporaryDirectory(prefix="fastsam-compact-") as tmp:
        folder = Path(tmp)
        paths = []
        try:
            for i, key in enumerate(keys):
                paths.append(folder / f"{i}.parquet")
                output.download(key, paths[-1])
        except ObjectNotFoundError:  # another commit compacted them first
            return
        files = [_normalised(output, key, path, folder) for key, path in zip(keys, paths, strict=True)]
        index_files.write_sorted(files, folder / "base.parquet", _spill(folder), merge=True)
        output.put_file(index_base_key(run_id), folder / "base.parquet")
    for key in keys:
        if key != index_base_key(run_id):
            output.delete(key)
