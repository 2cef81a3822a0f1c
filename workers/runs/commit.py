"""Committing a run: settle every shard, write the manifest, index the run, write _SUCCESS; and the run's state.

A committed run (`_SUCCESS`) never changes again. What the commit writes besides the tables (the
HTML report) is the caller's: `commit_run` takes it as a hook, so this package does not depend on
the outputs it feeds.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

import pyarrow as pa

from schemas.errors import RunIncompleteError
from schemas.fingerprint import labelling_id
from schemas.job import Job
from schemas.layout import RunLayout, parse_shard
from schemas.manifest import Plan, RunManifest, RunState, RunSummary, ShardMarker, ShardState, ShardSummary
from workers.runs import attempts, index
from workers.runs.plan import load_plan
from workers.runs.summaries import ShardStates, SummariesWriter
from workers.storage import ObjectStore
from workers.storage.files import load_document, read_parquet

#: Parallel requests when a commit reads or repairs many shards.
_IO_THREADS = 16
#: Shards whose markers or images tables a commit holds at once.
_WINDOW = 512


class ReportWriter(Protocol):
    """What a commit feeds the run's report: each shard's images table as it streams past, then `write`."""

    def add(self, images: pa.Table) -> None:
        """Take one shard's images table (in shard order)."""
        ...

    def write(self) -> object:
        """Write the report; never raises (a report must not cost the commit)."""
        ...


#: What a commit may write besides the tables: (output, layout, manifest, the shards' states) -> a ReportWriter.
ReportHook = Callable[[ObjectStore, RunLayout, RunManifest, ShardStates], ReportWriter]


def done_shard_ids(output: ObjectStore, layout: RunLayout) -> set[int]:
    """The ids of the run's done shards (one listing of their markers; none is read)."""
    return {i for o in output.list(layout.done_prefix) if (i := parse_shard(o.key)) is not None}


def done_markers(output: ObjectStore, layout: RunLayout) -> dict[int, ShardMarker]:
    """The markers of the run's done shards, by shard id (one listing, then one read per shard)."""
    shard_ids = sorted(done_shard_ids(output, layout))
    with ThreadPoolExecutor(_IO_THREADS) as pool:
        markers = pool.map(lambda i: attempts.read_marker(output, layout, i), shard_ids)
    return {m.summary.shard_id: m for m in markers if m is not None}


def _windows(ids: list[int]) -> Iterator[list[int]]:
    for start in range(0, len(ids), _WINDOW):
        yield ids[start : start + _WINDOW]


def summary_of(
    output: ObjectStore, layout: RunLayout, plan: Plan, done: Iterable[ShardSummary], state: RunState, **extra
) -> RunSummary:
    """The run's summary over its done shards' summaries (in shard order; read once)."""
    return RunSummary.of_shards(
        layout.run_id,
        output.uri_of(layout.prefix.rstrip("/")),
        state,
        plan.shards,
        plan,
        done,
        list_errors=plan.list_errors,
        **extra,
    )


def done_summaries(output: ObjectStore, layout: RunLayout) -> list[ShardSummary]:
    """The summaries of the run's done shards, in shard order (`done_markers`)."""
    markers = done_markers(output, layout)
    return [markers[i].summary for i in sorted(markers)]


def is_committed(output: ObjectStore, layout: RunLayout) -> bool:
    """Whether the run's _SUCCESS marker exists."""
    return output.head(layout.success) is not None


def commit_run(
    job: Job,
    output: ObjectStore,
    layout: RunLayout,
    code_version: str,
    started_at: datetime,
    report: ReportHook | None = None,
) -> RunManifest:
    """Settle every shard, write its states, the manifest, `report` (if given), index the run, write _SUCCESS.

    Markers, shard states and images tables stream through a window of shards at a time, so the
    commit's memory does not grow with the run. A committed run is left as it is.

    Raises:
        RunIncompleteError: naming the shards that are not done.
        ShardCommitError: a shard's files cannot be made its marker's.
    """
    if is_committed(output, layout):
        manifest = load_manifest(output, layout)
        if manifest is not None:
            return manifest
    plan = load_plan(output, layout)
    if plan is None:
        raise RunIncompleteError(f"run {layout.run_id} has no plan under {output.uri}; plan it first")
    done = done_shard_ids(output, layout)
    missing = [i for i in range(plan.shards) if i not in done]
    if missing:
        raise RunIncompleteError(f"run {layout.run_id} cannot be committed: shards {missing[:20]} are not done")
    with tempfile.TemporaryDirectory(prefix="fastsam-commit-") as tmp, ThreadPoolExecutor(_IO_THREADS) as pool:
        states = SummariesWriter(layout.run_id, Path(tmp))

        def settled() -> Iterator[ShardSummary]:  # markers a window at a time: read, settle, write their states
            for window in _windows(list(range(plan.shards))):
                markers = list(pool.map(lambda i: attempts.read_marker(output, layout, i), window))
                if any(m is None for m in markers):
                    gone = [i for i, m in zip(window, markers, strict=True) if m is None]
                    raise RunIncompleteError(f"run {layout.run_id}: the markers of shards {gone[:20]} vanished")
                list(pool.map(lambda m: attempts.settle(output, layout, m), markers))
                for m in markers:
                    states.add(ShardState(shard_id=m.summary.shard_id, attempt_id=m.attempt_id, summary=m.summary))
                    yield m.summary

        summary = summary_of(output, layout, plan, settled(), "committed")
        local = ShardStates.local(states.close(), states.count, output.uri_of(layout.summaries))
        for obj in list(output.list(layout.attempts_prefix)):  # every attempt's copies, winners' included
            output.delete(obj.key)
        manifest = RunManifest(
            run_id=layout.run_id,
            job=json.loads(job.model_dump_json()),
            fingerprint=plan.fingerprint,
            prompts=list(job.all_prompts),
            models={
                "fastsam": {
                    "name": job.model.checkpoint or "fastsam-tiny.pt (shipped)",
                    "sha256": summary.models.get("fastsam", []),
                },
                "clip": {"name": job.clip.arch if job.prompts else None, "sha256": summary.models.get("clip", [])},
            },
            code_version=code_version,
            summaries=layout.summaries,
            summary=summary,
            started_at=started_at,
            finished_at=datetime.now(UTC),
        )
        writer = report(output, layout, manifest, local) if report is not None else None
        part = index.PartWriter(output, layout.run_id, labelling_id(plan.fingerprint))
        for window in _windows(list(range(plan.shards))):  # images tables a window at a time: index and report
            images = (layout.table("images", i) for i in window)
            for table in pool.map(lambda key: read_parquet(output, key, "images"), images):
                part.add(table)
                if writer is not None:
                    writer.add(table)
        output.put_file(layout.summaries, states.path)
        output.put(layout.manifest, manifest.model_dump_json(indent=2).encode())
        if writer is not None:
            writer.write()
    part.close()
    output.put(layout.success, b"")
    return manifest


def load_manifest(output: ObjectStore, layout: RunLayout) -> RunManifest | None:
    """The committed run's manifest, or None.

    Raises:
        RunDamagedError: manifest.json exists but is not a manifest.
    """
    return load_document(output, layout.manifest, RunManifest, "run manifest")
