"""Files in a store: Parquet tables (checked to be ours, at this schema version) and JSON documents."""

from __future__ import annotations

import io
from typing import TypeVar

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, ValidationError

from schemas.errors import ObjectNotFoundError, RunDamagedError, SchemaVersionError, TableError
from schemas.tables import check_table
from workers.storage.base import ObjectStore

M = TypeVar("M", bound=BaseModel)


def parquet_bytes(table: pa.Table) -> bytes:
    """A table as Parquet bytes (zstd), schema metadata kept."""
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()


def read_parquet(store: ObjectStore, key: str, expected: str) -> pa.Table:
    """A Parquet object, checked to be the `expected` table at the current schema version.

    Raises:
        ObjectNotFoundError: no such object.
        TableError: the object is not a readable Parquet file, or not that table.
    """
    data = store.get(key)
    try:
        table = pq.read_table(io.BytesIO(data))
        check_table(table, expected)
    except (pa.ArrowException, ValueError, SchemaVersionError) as e:
        raise TableError(f"{store.uri_of(key)} is not a readable {expected} table ({e})") from None
    return table


def load_document(store: ObjectStore, key: str, model: type[M], what: str) -> M | None:
    """A JSON document (a pydantic `model`), or None when the object does not exist.

    Raises:
        RunDamagedError: it exists but is not a valid `model` (one line naming it, not a pydantic dump).
    """
    try:
        data = store.get(key)
    except ObjectNotFoundError:
        return None
    try:
        return model.model_validate_json(data)
    except ValidationError as e:
        first = e.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"]) or "the document"
        raise RunDamagedError(
            f"{store.uri_of(key)} is not a valid {what} ({e.error_count()} problem(s), first: {where}: "
            f"{first['msg']}); it was changed or damaged after it was written: restore it, or label again under a "
            "new run id"
        ) from None


#: Bytes fetched from a file's end to read its Parquet footer in one request, usually.
_FOOTER_GUESS = 64 * 1024


def footer_metadata(store: ObjectStore, key: str) -> dict[bytes, bytes]:
    """The key-value metadata of a Parquet object's footer, read from its end (one or two ranged reads)."""
    return footer(store, key)[0]


def footer(store: ObjectStore, key: str) -> tuple[dict[bytes, bytes], int]:
    """(the key-value metadata, the number of rows) of a Parquet object, from its footer (one or two ranged reads).

    Raises:
        ObjectNotFoundError: no such object.
        TableError, pyarrow.ArrowException: not a Parquet file.
    """
    tail = store.tail(key, _FOOTER_GUESS)
    if len(tail) < 12 or tail[-4:] != b"PAR1":
        raise TableError(f"{store.uri_of(key)} is not a Parquet file")
    length = int.from_bytes(tail[-8:-4], "little")
    if length + 8 > len(tail):
        tail = store.tail(key, length + 8)
    # The footer parser needs only the trailing bytes and a leading magic number.
    meta = pq.read_metadata(pa.BufferReader(b"PAR1" + tail[-(length + 8) :]))
    return dict(meta.metadata or {}), meta.num_rows
