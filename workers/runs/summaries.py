"""A committed run's shard states: `runs/{run_id}/summaries.parquet`, one row per shard in shard order.

    shard_id    int64    0..n-1, in order
    attempt_id  string   the attempt that counts (its marker's)
    objects, labelled, masks, prompts, embeddings   int64   the shard's counts (rows per table), for queries
    seconds     float64  wall seconds of the shard
    summary     string   the whole ShardSummary as JSON: what readers parse

The commit writes it as the markers stream past (`SummariesWriter`: a local file, a row group per
ROW_GROUP shards, put once), and readers take it a row group at a time (`ShardStates`), so neither
holds every shard of a run (listed in manifest.json, 390,625 shards were ~600 MB of JSON). Its footer
names the run; its rows must be the shards 0..n-1 in order, each summary naming its own shard, or
the run is damaged. Runs committed before the file list their shards in the manifest
(`RunManifest.shards`); `ShardStates` serves both.
"""

from __future__ import annotations

import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from schemas.errors import (
    DAMAGED_FIX,
    ObjectNotFoundError,
    RunDamagedError,
    SchemaVersionError,
    StoreError,
    TableError,
)
from schemas.layout import RunLayout
from schemas.manifest import RunManifest, ShardState, ShardSummary
from schemas.tables import RUN_KEY, SUMMARIES_SCHEMA, check_table
from workers.storage import ObjectStore
from workers.storage.files import footer


def _damaged(what: str) -> RunDamagedError:
    return RunDamagedError(f"{what}: {DAMAGED_FIX}")


def published_footer(output: ObjectStore, key: str) -> tuple[dict[bytes, bytes], int]:
    """(the footer's key-value metadata, the number of rows) of a file a committed run published.

    Raises:
        RunDamagedError: the file is missing or is not a readable Parquet file.
        StoreError: the store could not be read (not damage: the caller retries or reports it).
    """
    try:
        return footer(output, key)
    except ObjectNotFoundError:
        raise _damaged(f"{output.uri_of(key)} is missing") from None
    except StoreError:
        raise
    except (TableError, pa.ArrowException, OSError) as e:
        raise _damaged(f"{output.uri_of(key)} is not a readable Parquet file ({e})") from None


#: Shards per row group: what a reader parses at a time.
ROW_GROUP = 1024


class SummariesWriter:
    """Writes a run's summaries.parquet to a local file as shard states arrive (in shard order), ROW_GROUP at a time.

    Args:
        run_id: the run (named in the footer).
        folder: where the local file goes.
    """

    def __init__(self, run_id: str, folder: Path):
        self.path = folder / "summaries.parquet"
        schema = SUMMARIES_SCHEMA.with_metadata({**SUMMARIES_SCHEMA.metadata, RUN_KEY: run_id.encode()})
        self._writer = pq.ParquetWriter(self.path, schema, compression="zstd")
        self._schema = schema
        self._rows: list[ShardState] = []
        self.count = 0

    def add(self, state: ShardState) -> None:
        """Take the next shard's state (shard ids must come as 0, 1, 2, ...)."""
        if state.shard_id != self.count:
            raise ValueError(f"shard states must come in order: expected shard {self.count}, got {state.shard_id}")
        self._rows.append(state)
        self.count += 1
        if len(self._rows) >= ROW_GROUP:
            self._flush()

    def _flush(self) -> None:
        if not self._rows:
            return
        s = [r.summary for r in self._rows]
        columns = {
            "shard_id": [r.shard_id for r in self._rows],
            "attempt_id": [r.attempt_id for r in self._rows],
            **{k: [getattr(x, k) for x in s] for k in ("objects", "labelled", "masks", "prompts", "embeddings")},
            "seconds": [x.seconds for x in s],
            "summary": [x.model_dump_json() for x in s],
        }
        self._writer.write_table(pa.table(columns, schema=self._schema), row_group_size=ROW_GROUP)
        self._rows = []

    def close(self) -> Path:
        """Finish the file; its path."""
        self._flush()
        self._writer.close()
        return self.path


class ShardStates:
    """The states of a committed run's shards, in shard order, read a row group at a time.

    `len`, iteration (shard 0 first) and `states[shard_id]` (the row group holding it, the last one
    kept) are safe from several threads. Built by `for_run` (a committed run's file, downloaded to a
    temporary folder when first read) or `local` (the file a commit has just written).

    Raises (when rows are read):
        RunDamagedError: the file is missing, unreadable, names another run, or its rows are not the
            shards 0..n-1 in order.
    """

    def __init__(self, count: int, where: str, path: Path | None = None, legacy: list[ShardState] | None = None):
        self._count, self.where = count, where
        self._path, self._legacy = path, legacy
        self._fetch: tuple[ObjectStore, str] | None = None
        self._tmp: tempfile.TemporaryDirectory | None = None
        self._file: pq.ParquetFile | None = None
        self._cached: tuple[int, list[ShardState]] | None = None
        self._lock = threading.RLock()

    @classmethod
    def local(cls, path: Path, count: int, where: str) -> ShardStates:
        """The states in a local summaries file of `count` shards (`where` names it in messages)."""
        return cls(count, where, path=path)

    @classmethod
    def for_run(cls, output: ObjectStore, layout: RunLayout, manifest: RunManifest, shards: int) -> ShardStates:
        """A committed run's states, checked against its plan's `shards` from the file's footer (one ranged read).

        Raises:
            RunDamagedError: the manifest's list or the file's footer does not hold the planned shards.
        """
        if manifest.summaries is None:  # committed before summaries.parquet: the manifest lists them
            legacy = manifest.shards or []
            ids = [s.shard_id for s in legacy]
            if ids != list(range(shards)):
                where = output.uri_of(layout.manifest)
                raise _damaged(
                    f"{where} does not match the run's plan: it lists shards {ids[:5]}{'...' if len(ids) > 5 else ''}"
                    f", the plan 0..{shards - 1}"
                )
            return cls(len(legacy), output.uri_of(layout.manifest), legacy=legacy)
        key = layout.summaries
        where = output.uri_of(key)
        if manifest.summaries != key:
            raise _damaged(f"{output.uri_of(layout.manifest)} names {manifest.summaries!r}, not {key!r}")
        meta, rows = published_footer(output, key)
        found = meta.get(RUN_KEY, b"?").decode()
        if found != layout.run_id or rows != shards:
            raise _damaged(
                f"{where} holds {rows} shard(s) of run {found}, but the plan has {shards} of run {layout.run_id}"
            )
        states = cls(rows, where)
        states._fetch = (output, key)
        return states

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[ShardState]:
        if self._legacy is not None:
            yield from self._legacy
            return
        for group in range(self._groups()):
            yield from self._group(group)

    def __getitem__(self, shard_id: int) -> ShardState:
        if not 0 <= shard_id < self._count:
            raise IndexError(f"shard {shard_id} is not in the run (0..{self._count - 1})")
        if self._legacy is not None:
            return self._legacy[shard_id]
        with self._lock:
            group = shard_id // ROW_GROUP
            if self._cached is None or self._cached[0] != group:
                self._cached = (group, self._group(group))
            return self._cached[1][shard_id - group * ROW_GROUP]

    def _groups(self) -> int:
        return self._open().num_row_groups if self._count else 0

    def _open(self) -> pq.ParquetFile:
        with self._lock:
            if self._file is None:
                path = self._path
                if path is None:
                    store, key = self._fetch  # type: ignore[misc]
                    self._tmp = tempfile.TemporaryDirectory(prefix="fastsam-summaries-")
                    path = Path(self._tmp.name) / "summaries.parquet"
                    try:
                        store.download(key, path)
                    except ObjectNotFoundError:
                        raise _damaged(f"{self.where} is missing") from None
                try:
                    self._file = pq.ParquetFile(path)
                    check_table(self._file.schema_arrow, "summaries")
                except (pa.ArrowException, OSError, SchemaVersionError) as e:
                    raise _damaged(f"{self.where} is not a readable summaries table ({e})") from None
            return self._file

    def _group(self, group: int) -> list[ShardState]:
        """The states of one row group, checked to be shards group*ROW_GROUP, ... in order."""
        try:
            t = self._open().read_row_group(group, columns=["shard_id", "attempt_id", "summary"])
        except (pa.ArrowException, OSError) as e:
            raise _damaged(f"{self.where} is not a readable summaries table ({e})") from None
        first = group * ROW_GROUP
        if t.num_rows != min(ROW_GROUP, self._count - first):
            raise _damaged(
                f"{self.where}: row group {group} holds {t.num_rows} shards, not {min(ROW_GROUP, self._count - first)}"
            )
        out = []
        for i, (sid, attempt, text) in enumerate(
            zip(*(t[c].to_pylist() for c in ("shard_id", "attempt_id", "summary")), strict=True)
        ):
            try:
                summary = ShardSummary.model_validate_json(text)
            except ValueError:
                summary = None
            if sid != first + i or summary is None or summary.shard_id != sid:
                raise _damaged(f"{self.where}: row {first + i} is not shard {first + i}'s state (it names shard {sid})")
            out.append(ShardState(shard_id=sid, attempt_id=attempt, summary=summary))
        return out
