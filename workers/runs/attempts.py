"""Exactly-once shard output under retries and zombies, in the manner of Hadoop's and Spark's output committers.

1. Every attempt at a shard has its own id. It labels the shard and writes its tables aside, under
   `runs/{run}/_attempts/{attempt}/`, each with the attempt id in its Parquet footer.
2. It then creates the shard's marker `done/shard-N.json` exclusively (a conditional PUT, or a hard
   link locally). The marker names the attempt and its files. Of two attempts (an actor that was
   thought lost but was only partitioned, and the one that replaced it) exactly one creates it; the
   other finds a marker that is not its own, deletes its files and never publishes.
3. The winner copies its files to the published keys `runs/{run}/{table}/shard-N.parquet`.
4. At commit (`settle`), every published file's footer must name the marker's attempt; a missing or
   foreign file is copied again from the marker's own copy (a winner that died between 2 and 3).

So the published tables of a shard always come from one attempt, the one its marker names, and a
late attempt cannot change a committed run.
"""

from __future__ import annotations

import logging
import secrets
import time
from datetime import UTC, datetime

import pyarrow as pa

from schemas.errors import ObjectNotFoundError, ShardCommitError
from schemas.layout import RunLayout
from schemas.manifest import ShardMarker, ShardSummary, TableFile
from schemas.tables import ATTEMPT_KEY, with_attempt
from workers.runs.parts import ShardPart, shard_summary
from workers.storage import ObjectStore
from workers.storage.files import footer_metadata, parquet_bytes

log = logging.getLogger(__name__)


def new_attempt_id() -> str:
    """A fresh attempt id: 16 hex digits."""
    return secrets.token_hex(8)


def read_marker(output: ObjectStore, layout: RunLayout, shard_id: int) -> ShardMarker | None:
    """The shard's marker, or None while no attempt has finished it."""
    try:
        return ShardMarker.model_validate_json(output.get(layout.done(shard_id)))
    except ObjectNotFoundError:
        return None


def finish_attempt(
    output: ObjectStore,
    layout: RunLayout,
    shard_id: int,
    attempt_id: str,
    tables: dict[str, pa.Table],
    summary: ShardSummary,
) -> tuple[ShardMarker, bool]:
    """Stage an attempt's tables, try to create the shard's marker, and publish if this attempt won.

    Args:
        output: the job's output store.
        layout: the run.
        shard_id: the shard.
        attempt_id: this attempt (commit.new_attempt_id()).
        tables: the attempt's table parts by table name ("images", "masks", and "prompts" when the
            job has a prompt table).
        summary: the attempt's summary; the seconds spent staging are added as stage "write".

    Returns:
        (the shard's marker, whether this attempt's marker is it). A losing attempt gets the
        winner's marker and leaves nothing behind.
    """
    existing = read_marker(output, layout, shard_id)
    if existing is not None:
        log.warning("shard %d of %s: attempt %s found attempt %s done; not writing", shard_id, layout.run_id,
                    attempt_id, existing.attempt_id)  # fmt: skip
        return existing, False
    files = {}
    t0 = time.perf_counter()
    for name, table in tables.items():
        staged = layout.staged(attempt_id, name, shard_id)
        output.put(staged, parquet_bytes(with_attempt(table, layout.run_id, shard_id, attempt_id)))
        files[name] = TableFile(key=layout.table(name, shard_id), staged=staged, rows=table.num_rows)
    write_s = time.perf_counter() - t0
    summary = summary.model_copy(
        update={"stage_seconds": {**summary.stage_seconds, "write": write_s}, "seconds": summary.seconds + write_s}
    )
    marker = ShardMarker(attempt_id=attempt_id, files=files, summary=summary, created_at=datetime.now(UTC))
    if not output.create(layout.done(shard_id), marker.model_dump_json(indent=1).encode()):
        for f in files.values():
            output.delete(f.staged)
        winner = read_marker(output, layout, shard_id)
        log.warning("shard %d of %s: attempt %s lost to attempt %s; its files were removed", shard_id,
                    layout.run_id, attempt_id, winner.attempt_id if winner else "?")  # fmt: skip
        if winner is None:  # cannot happen: create() refused because the marker exists
            raise ShardCommitError(f"shard {shard_id} of run {layout.run_id}: its marker vanished")
        return winner, False
    publish(output, marker)
    return marker, True


def commit_part(
    output: ObjectStore, layout: RunLayout, shard_id: int, attempt_id: str, part: ShardPart, t0: float
) -> ShardSummary:
    """Commit a whole shard's part as one attempt; the summary that counts (this attempt's, or the winner's).

    Args:
        output: the job's output store.
        layout: the run.
        shard_id: the shard.
        attempt_id: this attempt.
        part: the shard's tables (workers.runs.parts.ShardPart).
        t0: time.perf_counter() when the attempt started (for the summary's seconds).
    """
    summary = shard_summary(layout.run_id, shard_id, attempt_id, part, time.perf_counter() - t0)
    marker, won = finish_attempt(output, layout, shard_id, attempt_id, part.tables(), summary)
    if won:
        log.info("shard %d of %s: %d objects, %d masks", shard_id, layout.run_id, summary.objects, summary.masks)
    return marker.summary


def publish(output: ObjectStore, marker: ShardMarker) -> None:
    """Copy the marker's staged files to their published keys."""
    for f in marker.files.values():
        output.copy(f.staged, f.key)


def published_attempt(store: ObjectStore, key: str) -> str | None:
    """The attempt id in a published file's footer; None when the file is missing or names none."""
    try:
        value = footer_metadata(store, key).get(ATTEMPT_KEY)
    except ObjectNotFoundError:
        return None
    return value.decode() if value else None


def settle(output: ObjectStore, layout: RunLayout, marker: ShardMarker) -> int:
    """Make the shard's published files exactly the marker's; the number of files repaired.

    Raises:
        ShardCommitError: a file is not the marker's and the marker's own copy is gone.
    """
    repaired = 0
    for name, f in marker.files.items():
        if published_attempt(output, f.key) == marker.attempt_id:
            continue
        try:
            output.copy(f.staged, f.key)
        except ObjectNotFoundError:
            shard = marker.summary.shard_id
            raise ShardCommitError(
                f"shard {shard} of run {layout.run_id}: its {name} table is not from attempt {marker.attempt_id} "
                f"named by {layout.done(shard)}, and that attempt's copy is gone; delete the marker and run again "
                "with the same run id to label the shard again"
            ) from None
        repaired += 1
    return repaired
