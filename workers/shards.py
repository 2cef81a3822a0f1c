"""Shards: the plan's listing (list, filter, sort, cut), the shards' work lists, and Parquet bytes."""

from __future__ import annotations

import io
from collections.abc import Iterable

import pyarrow as pa
import pyarrow.parquet as pq

from schemas.job import SourceSpec
from schemas.layout import RunLayout
from schemas.tables import SHARD_SCHEMA, check_table
from workers.store import ObjectInfo, ObjectNotFoundError, ObjectStore


def parquet_bytes(table: pa.Table) -> bytes:
    """A table as Parquet bytes (zstd), schema metadata kept."""
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()


class TableError(ValueError):
    """An object that should hold one of our tables does not; the message names it."""


def read_parquet(store: ObjectStore, key: str, expected: str) -> pa.Table:
    """A Parquet object, checked to be the `expected` table at the current schema version.

    Raises:
        TableError: the object is not a readable Parquet file, or not that table.
    """
    data = store.get(key)
    try:
        table = pq.read_table(io.BytesIO(data))
        check_table(table, expected)
    except (pa.ArrowException, ValueError) as e:
        raise TableError(f"{store.uri_of(key)} is not a readable {expected} table ({e})") from None
    return table


def list_source(store: ObjectStore, spec: SourceSpec) -> list[ObjectInfo]:
    """The objects a job labels: listed (paginated), filtered by extension and globs, sorted by key."""
    return sorted((o for o in store.list() if spec.wants(o.key)), key=lambda o: o.key)


def cut(objects: list[ObjectInfo], shard_size: int) -> list[list[ObjectInfo]]:
    """Consecutive shards of at most `shard_size` objects (the last may be shorter)."""
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, but got {shard_size}")
    return [objects[i : i + shard_size] for i in range(0, len(objects), shard_size)]


def write_shard_list(store: ObjectStore, layout: RunLayout, shard_id: int, objects: Iterable[ObjectInfo]) -> None:
    """Write a shard's work list to the output store."""
    objs = list(objects)
    table = pa.table(
        {"key": [o.key for o in objs], "size": [o.size for o in objs], "etag": [o.etag for o in objs]},
        schema=SHARD_SCHEMA,
    )
    store.put(layout.shard_list(shard_id), parquet_bytes(table))


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
