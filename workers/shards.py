"""Shards: the plan's listing (list, filter, sort, cut), the shards' work lists, and Parquet bytes."""

from __future__ import annotations

import io

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from schemas.errors import ObjectNotFoundError, RunDamagedError, SchemaVersionError, TableError
from schemas.job import SourceSpec
from schemas.layout import RunLayout
from schemas.tables import ATTEMPT_KEY, RUN_KEY, SHARD_KEY, SHARD_SCHEMA, check_table
from workers.store import ObjectInfo, ObjectStore


def parquet_bytes(table: pa.Table) -> bytes:
    """A table as Parquet bytes (zstd), schema metadata kept."""
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()


def read_parquet(store: ObjectStore, key: str, expected: str) -> pa.Table:
    """A Parquet object, checked to be the `expected` table at the current schema version.

    Raises:
        TableError: the object is not a readable Parquet file, or not that table.
    """
    data = store.get(key)
    try:
        table = pq.read_table(io.BytesIO(data))
        check_table(table, expected)
    except (pa.ArrowException, ValueError, SchemaVersionError) as e:
        raise TableError(f"{store.uri_of(key)} is not a readable {expected} table ({e})") from None
    return table


#: What to do about a damaged run, for RunDamagedError messages.
DAMAGED_FIX = "the run's files changed after it was committed; restore them, or label again under a new run id"


def check_footer(
    where: str, meta: dict[bytes, bytes], rows: int, layout: RunLayout, shard_id: int, attempt_id: str, expected: int
) -> None:
    """Refuse a published table whose footer names another run, shard or attempt, or holds other than `expected` rows.

    Raises:
        RunDamagedError: naming the file, what it holds and what the manifest names.
    """
    found = tuple(meta.get(k, b"?").decode() for k in (RUN_KEY, SHARD_KEY, ATTEMPT_KEY))
    if found != (layout.run_id, str(shard_id), attempt_id) or rows != expected:
        raise RunDamagedError(
            f"{where} holds run {found[0]} shard {found[1]} attempt {found[2]} with {rows} rows, but the manifest "
            f"names run {layout.run_id} shard {shard_id} attempt {attempt_id} with {expected} rows: {DAMAGED_FIX}"
        )


def read_shard_table(
    store: ObjectStore, layout: RunLayout, name: str, shard_id: int, attempt_id: str, rows: int
) -> pa.Table:
    """A committed shard's published table, checked to be the one its manifest names (`check_footer`).

    The footer names the run, the shard and the attempt (`schemas.tables.with_attempt`), so a file
    swapped for another shard's, another run's or a late attempt's is refused, not read.

    Raises:
        RunDamagedError: the file is missing, unreadable (truncated), or not the manifest's.
    """
    key = layout.table(name, shard_id)
    try:
        table = read_parquet(store, key, name)
    except ObjectNotFoundError:
        raise RunDamagedError(f"{store.uri_of(key)} is missing: {DAMAGED_FIX}") from None
    except TableError as e:
        raise RunDamagedError(f"{e}: {DAMAGED_FIX}") from None
    check_footer(store.uri_of(key), table.schema.metadata or {}, table.num_rows, layout, shard_id, attempt_id, rows)
    return table


def list_source(
    store: ObjectStore, spec: SourceSpec, chunk: int = 10_000, skipped: list[str] | None = None
) -> pa.Table:
    """The objects a job labels, as a SHARD_SCHEMA table (key, size, etag) sorted by key.

    The listing is streamed page by page and kept as Arrow columns (about 80 bytes per object),
    never as a list of Python objects; only keys the job wants (extension, globs) are kept. Parts
    of the source that could not be listed are appended to `skipped` ("path: why").
    """
    batches, keys, sizes, etags = [], [], [], []

    def flush() -> None:
        batches.append(pa.record_batch([keys, sizes, etags], schema=SHARD_SCHEMA))
        keys.clear(), sizes.clear(), etags.clear()

    for o in store.list(skipped=skipped):
        if spec.wants(o.key):
            keys.append(o.key), sizes.append(o.size), etags.append(o.etag)
            if len(keys) >= chunk:
                flush()
    flush()
    table = pa.Table.from_batches(batches, schema=SHARD_SCHEMA)
    key = table["key"]
    if len(key) > 1 and pc.any(pc.less(key.slice(1), key.slice(0, len(key) - 1))).as_py():
        table = table.sort_by("key")  # stores list in key order; a local folder might not
    return table


def write_shard_list(store: ObjectStore, layout: RunLayout, shard_id: int, objects: pa.Table) -> None:
    """Write a shard's work list (rows of a `list_source` table) to the output store."""
    store.put(layout.shard_list(shard_id), parquet_bytes(objects.cast(SHARD_SCHEMA)))


def read_shard_list(store: ObjectStore, layout: RunLayout, shard_id: int) -> list[ObjectInfo]:
    """A shard's work list, as written by `write_shard_list`."""
    key = layout.shard_list(shard_id)
    try:
        t = read_parquet(store, key, "shard")
    except ObjectNotFoundError:
        raise ObjectNotFoundError(
            f"shard {shard_id} of run {layout.run_id} has no work list at {store.uri_of(key)}; plan the run first"
        ) from None
    return [ObjectInfo(r["key"], r["size"], r["etag"]) for r in t.to_pylist()]
