"""The incremental index: which source objects (URI and ETag) the committed runs under an output labelled.

    index/part-{run_id}.parquet   written by a run's commit, just before its _SUCCESS (INDEX_SCHEMA)
    index/base-{run_id}.parquet   a compaction: parts and bases merged by the commit of `run_id`

A part counts only once its run's `_SUCCESS` exists (a commit that died between the two did not
happen). When a commit finds more than `COMPACT_AT` files, it merges the ones that count into one
base and deletes them; a planner reading at the same time may see both copies (harmless) or find a
file gone (it lists again). Planning an incremental run reads this one small dataset, not the
images tables of every earlier run.

Matching is on (URI, ETag): the URI carries the source prefix, so a copy of a bucket is new; an
object whose ETag is unknown never matches, so it is labelled. Objects whose status may pass on a
later try (`ImageStatus.retry_later`) are not indexed.
"""

from __future__ import annotations

import logging

import pyarrow as pa
import pyarrow.compute as pc

from schemas.errors import ObjectNotFoundError, StoreUnavailableError
from schemas.layout import INDEX, RUNS, RunLayout, index_base_key, index_part_key, parse_index_key, run_of
from schemas.tables import INDEX_SCHEMA, ImageStatus
from workers.storage import ObjectStore
from workers.storage.files import parquet_bytes, read_parquet

log = logging.getLogger(__name__)

#: Index files that trigger a compaction at commit.
COMPACT_AT = 16

_RETRY_LATER = pa.array([s.value for s in ImageStatus if s.retry_later])
_EMPTY = INDEX_SCHEMA.empty_table()


def rows_of(images: pa.Table, run_id: str) -> pa.Table:
    """The index rows of a run's images table: objects labelled for good, with a known ETag."""
    keep = pc.and_(pc.invert(pc.is_in(images["status"], value_set=_RETRY_LATER)), pc.is_valid(images["etag"]))
    t = images.filter(keep)
    return pa.table(
        {"uri": t["uri"], "etag": t["etag"], "run_id": pa.array([run_id] * t.num_rows, pa.string())},
        schema=INDEX_SCHEMA,
    )


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


def _committed_runs(output: ObjectStore) -> list[str]:
    """Runs with a _SUCCESS marker (one listing of runs/)."""
    return sorted({run_of(o.key) for o in output.list(RUNS) if o.key.endswith("/_SUCCESS")} - {None})


def _legacy(output: ObjectStore, exclude: str | None = None) -> pa.Table:
    """Index rows rebuilt from the images tables of committed runs (outputs written before the index).

    Only the files each run's manifest names are read, each checked against it (workers.runs.committed).
    """
    from workers.runs.committed import CommittedRun  # it reads runs through workers.runs, which uses this module

    tables = [_EMPTY]
    for run_id in _committed_runs(output):
        if run_id == exclude:
            continue
        run = CommittedRun(output, run_id)
        tables += [rows_of(run.table("images", state), run_id) for state in run.manifest.shards]
    return pa.concat_tables(tables)


def load(output: ObjectStore) -> pa.Table:
    """Every (uri, etag, run_id) the committed runs under `output` labelled (duplicates possible)."""
    for _ in range(3):
        keys = _counted(output)
        if not keys:
            return _legacy(output)
        try:
            return pa.concat_tables([_EMPTY, *(read_parquet(output, k, "index") for k in keys)])
        except ObjectNotFoundError:  # compacted away while we read: list again
            continue
    raise StoreUnavailableError(f"the index under {output.uri_of(INDEX)} kept changing while it was read; try again")


def uris(source: ObjectStore, keys: pa.ChunkedArray | pa.Array, chunk: int = 100_000) -> pa.ChunkedArray:
    """source.uri_of(key) for every key, built a chunk at a time (no list of a million strings)."""
    parts = []
    for start in range(0, len(keys), chunk):
        parts.append(pa.array([source.uri_of(k) for k in keys.slice(start, chunk).to_pylist()], pa.string()))
    return pa.chunked_array(parts, pa.string())


def _pair_keys(uri: pa.ChunkedArray, etag: pa.ChunkedArray) -> pa.ChunkedArray:
    """One string per (uri, etag); null where the ETag is unknown. A newline cannot be in an ETag."""
    return pc.binary_join_element_wise(uri.cast(pa.string()), etag.cast(pa.string()), "\n")


def unseen(listing: pa.Table, index: pa.Table) -> pa.ChunkedArray:
    """(N,) bool over `listing` (columns uri, etag): True where no index row has the same URI and ETag.

    An object whose ETag is unknown never matches, so it counts as unseen.
    """
    if listing.num_rows == 0:
        return pa.chunked_array([pa.array([], pa.bool_())])
    wanted = _pair_keys(listing["uri"], listing["etag"])
    seen = pc.is_in(wanted, value_set=_pair_keys(index["uri"], index["etag"]).combine_chunks(), skip_nulls=True)
    return pc.fill_null(pc.invert(seen), True)


def add_run(output: ObjectStore, run_id: str, images: list[pa.Table]) -> None:
    """Write the index part of a run about to commit (from its images tables); compact when files have gathered.

    The first commit under an output that has committed runs but no index also writes a base
    rebuilt from those runs' images tables, so the index is complete from then on.
    """
    before = _counted(output)
    if not before:
        legacy = _legacy(output, exclude=run_id)
        if legacy.num_rows:
            output.put(index_base_key(run_id), parquet_bytes(legacy))
            log.info("index: %d objects of earlier runs indexed under %s", legacy.num_rows, output.uri_of(INDEX))
    output.put(index_part_key(run_id), parquet_bytes(pa.concat_tables([_EMPTY, *(rows_of(t, run_id) for t in images)])))
    if len(before) >= COMPACT_AT:
        compact(output, run_id, before)


def compact(output: ObjectStore, run_id: str, keys: list[str]) -> None:
    """Merge counted index files into `index/base-{run_id}.parquet`, then delete them."""
    try:
        merged = pa.concat_tables([_EMPTY, *(read_parquet(output, k, "index") for k in keys)])
    except ObjectNotFoundError:  # another commit compacted them first
        return
    merged = merged.group_by(["uri", "etag"]).aggregate([("run_id", "max")])  # one row per (uri, etag)
    merged = merged.select(["uri", "etag", "run_id_max"]).rename_columns(INDEX_SCHEMA.names)
    output.put(index_base_key(run_id), parquet_bytes(merged.cast(INDEX_SCHEMA)))
    for key in keys:
        if key != index_base_key(run_id):
            output.delete(key)
