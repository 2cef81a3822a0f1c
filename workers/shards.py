"""Shards: the plan (list, filter, sort, cut) and where each shard's inputs and outputs live.

Every key below is built from the run id and the shard number only (never from a source key), so
a retried shard overwrites its own outputs and nothing can land outside the output prefix.
"""

from __future__ import annotations

import io
from collections.abc import Iterable

import pyarrow as pa
import pyarrow.parquet as pq

from schemas.job import SourceSpec, check_run_id
from schemas.manifest import ShardSummary
from schemas.tables import SHARD_SCHEMA, check_table
from workers.store import ObjectInfo, ObjectNotFoundError, ObjectStore, safe_key

#: Output tables written per shard, under runs/{run_id}/{table}/.
TABLES = ("images", "masks", "prompts")


def _shard(shard_id: int) -> str:
    if not isinstance(shard_id, int) or shard_id < 0:
        raise ValueError(f"shard id must be an int >= 0, but got {shard_id!r}")
    return f"shard-{shard_id:05d}"


def run_prefix(run_id: str) -> str:
    """runs/{run_id}: everything a run writes lives under it."""
    return safe_key("runs", check_run_id(run_id))


def shard_list_key(run_id: str, shard_id: int) -> str:
    """The shard's work list (SHARD_SCHEMA Parquet)."""
    return safe_key(run_prefix(run_id), "shards", _shard(shard_id) + ".parquet")


def table_key(run_id: str, table: str, shard_id: int) -> str:
    """The shard's part of an output table."""
    if table not in TABLES:
        raise ValueError(f"table must be one of {TABLES}, but got {table!r}")
    return safe_key(run_prefix(run_id), table, _shard(shard_id) + ".parquet")


def done_key(run_id: str, shard_id: int) -> str:
    """The shard's completion marker (a ShardSummary as JSON), written after its tables."""
    return safe_key(run_prefix(run_id), "done", _shard(shard_id) + ".json")


def parquet_bytes(table: pa.Table) -> bytes:
    """A table as Parquet bytes (zstd), schema metadata kept."""
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()


def read_parquet(store: ObjectStore, key: str, expected: str) -> pa.Table:
    """A Parquet object, checked to be the `expected` table at the current schema version."""
    table = pq.read_table(io.BytesIO(store.get(key)))
    check_table(table, expected)
    return table


def list_source(store: ObjectStore, spec: SourceSpec) -> list[ObjectInfo]:
    """The objects a job labels: listed (paginated), filtered by extension and globs, sorted by key."""
    return sorted((o for o in store.list() if spec.wants(o.key)), key=lambda o: o.key)


def cut(objects: list[ObjectInfo], shard_size: int) -> list[list[ObjectInfo]]:
    """Consecutive shards of at most `shard_size` objects (the last may be shorter)."""
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, but got {shard_size}")
    return [objects[i : i + shard_size] for i in range(0, len(objects), shard_size)]


def write_shard_list(store: ObjectStore, run_id: str, shard_id: int, objects: Iterable[ObjectInfo]) -> None:
    """Write a shard's work list to the output store."""
    objs = list(objects)
    table = pa.table(
        {"key": [o.key for o in objs], "size": [o.size for o in objs], "etag": [o.etag for o in objs]},
        schema=SHARD_SCHEMA,
    )
    store.put(shard_list_key(run_id, shard_id), parquet_bytes(table))


def read_shard_list(store: ObjectStore, run_id: str, shard_id: int) -> list[ObjectInfo]:
    """A shard's work list, as written by `write_shard_list`."""
    try:
        t = read_parquet(store, shard_list_key(run_id, shard_id), "shard")
    except ObjectNotFoundError:
        raise ObjectNotFoundError(
            f"shard {shard_id} of run {run_id} has no work list at {store.uri_of(shard_list_key(run_id, shard_id))}; "
            "plan the run first"
        ) from None
    return [ObjectInfo(r["key"], r["size"], r["etag"]) for r in t.to_pylist()]


def shard_summary(store: ObjectStore, run_id: str, shard_id: int) -> ShardSummary | None:
    """The shard's summary if the shard is complete (its marker exists), else None."""
    try:
        data = store.get(done_key(run_id, shard_id))
    except ObjectNotFoundError:
        return None
    return ShardSummary.model_validate_json(data)
