"""Planning a run as a stream: shard lists are written as the listing fills them, the plan sealed when it ends.

    runs/{run_id}/planning.json        created before the first shard list: the job that is planning
    runs/{run_id}/shards/shard-N.parquet   written in order as each fills (SHARD_SCHEMA; a PlanProgress in its footer)
    runs/{run_id}/plan.json            created when the listing ends: the plan is sealed

Memory is bounded by one chunk of the listing and a few shard lists in flight, whatever the size
of the source. Shard ids are handed out (`shard_ids`) as soon as their list and every list before
it are written, so labelling starts while the listing goes on. A planner that stops (a crash, a
lost lease) leaves a prefix of shard lists whose last footer says where the listing stood; the
next planner of that run checks `planning.json` against its job, keeps that prefix and lists on
after its last key (S3 StartAfter). Lists past the prefix (written out of order by parallel
writes) were never handed out and are written again. Shard boundaries depend only on the listing,
so a resumed plan cuts the same shards as an uninterrupted one.

Incremental runs classify each chunk against the index rows of its URI range
(`workers.runs.index.classify`), read from a local copy of the index (`index_files.RangeReader`):
memory does not grow with the index either.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import queue
import tempfile
import threading
from concurrent.futures import Future, ThreadPoolExecutor, wait
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from schemas.errors import EmptySourceError, StoreError, TableError, UnorderedListingError
from schemas.fingerprint import differences, labelling, labelling_id
from schemas.job import IncrementalMode, Job, SourceSpec, StorageSpec, incremental_mode
from schemas.layout import RunLayout, parse_shard
from schemas.manifest import ListErrors, Plan, Planning, PlanProgress
from schemas.tables import SHARD_SCHEMA
from workers.runs import index, index_files
from workers.runs.plan import check_same_job, create_plan, load_plan
from workers.storage import ObjectStore
from workers.storage.files import footer_metadata, load_document, parquet_bytes
from workers.storage.listings import Listing, open_listing

log = logging.getLogger(__name__)

#: Footer key of a shard list's PlanProgress (JSON).
PROGRESS_KEY = b"fastsam_label.plan_progress"
#: Folders that could not be listed named in a plan (the rest are counted).
_LISTED_ERRORS = 20
#: Earlier runs whose plans are read to say why objects are relabelled.
_RELABEL_RUNS_READ = 8
#: Listed objects classified at a time (with the shard size, what bounds the planner's memory).
CHUNK = 16_384
#: Shard lists written at once.
_WRITE_THREADS = 8
_END = object()


def load_planning(output: ObjectStore, layout: RunLayout) -> Planning | None:
    """The run's planning record, or None when planning never started."""
    return load_document(output, layout.planning, Planning, "run planning record")


class Planner:
    """Plans one run (or resumes its planning); `run` in one thread, `shard_ids` in another.

    Args:
        job: the validated job.
        source, output: its stores.
        layout: the run.
        fingerprint: the job's fingerprint (schemas.fingerprint).
        incremental: an IncrementalMode (True = "labels"); a resumed planning keeps the mode it began with.
        chunk: listed objects classified at a time (bounds memory with the shard size); None = CHUNK.
    """

    def __init__(
        self,
        job: Job,
        source: ObjectStore,
        output: ObjectStore,
        layout: RunLayout,
        fingerprint: dict,
        incremental: bool | IncrementalMode = False,
        chunk: int | None = None,
    ):
        self.job, self.source, self.output, self.layout = job, source, output, layout
        self.fingerprint = fingerprint
        self.mode = incremental_mode(incremental)
        self.listing = open_listing(job.source, job.storage, source)
        self.chunk = max(chunk or CHUNK, 1)
        self.size = job.compute.shard_size
        self._ready: queue.SimpleQueue = queue.SimpleQueue()
        self._stop = threading.Event()
        self.plan: Plan | None = None

    # -- the consumer's side -------------------------------------------------------------------
    def shard_ids(self):
        """Shard ids in order as their lists are written; ends when the plan is sealed.

        Raises:
            whatever `run` raised (the listing failed, the source is empty, another job planned the run).
        """
        while True:
            item = self._ready.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def stop(self) -> None:
        """Ask `run` to stop after the chunk it is on (the shard lists written so far stay for a resume)."""
        self._stop.set()

    # -- the planner's side --------------------------------------------------------------------
    def run(self) -> Plan:
        """Plan the run (or load its sealed plan); every shard id is handed to `shard_ids` on the way.

        Raises:
            RunMismatchError: the run was planned (or is being planned) by another job.
            EmptySourceError: the listing holds nothing the job labels (nothing is written).
            StoreError: the source or output failed.
        """
        try:
            plan = self._run()
        except BaseException as e:
            self._ready.put(e)
            raise
        self.plan = plan
        self._ready.put(_END)
        return plan

    def _run(self) -> Plan:
        existing = load_plan(self.output, self.layout)
        if existing is not None:
            check_same_job(existing, self.fingerprint)
            for i in range(existing.shards):
                self._ready.put(i)
            return existing
        planning = load_planning(self.output, self.layout)
        kept, progress = 0, None
        if planning is not None:
            check_same_job(planning, self.fingerprint)  # type: ignore[arg-type]  (same fields as a Plan)
            self.mode = planning.incremental
            kept, progress = resume_point(self.output, self.layout)
            if kept:
                log.info("run %s: planning resumed after %d shard lists (after %s)", self.layout.run_id, kept,
                         progress.through)  # fmt: skip
        for i in range(kept):
            self._ready.put(i)
        return _Stream(self, planning, kept, progress).run()


def resume_point(output: ObjectStore, layout: RunLayout) -> tuple[int, PlanProgress | None]:
    """(shard lists kept, the last one's progress) of an unsealed plan: the longest run 0..k-1 of lists with one."""
    ids = sorted(i for o in output.list(layout.shards_prefix) if (i := parse_shard(o.key)) is not None)
    kept = 0
    for i in ids:
        if i != kept:
            break
        kept += 1
    while kept:
        try:
            meta = footer_metadata(output, layout.shard_list(kept - 1))
        except (StoreError, TableError, pa.ArrowException):
            meta = {}
        if PROGRESS_KEY in meta:
            return kept, PlanProgress.model_validate_json(meta[PROGRESS_KEY])
        kept -= 1  # written before lists carried their progress, or damaged: plan it again
    return 0, None


def plan_so_far(output: ObjectStore, layout: RunLayout) -> Plan | None:
    """The sealed plan; or, while the run is being planned, a plan of the shard lists written so far; or None."""
    plan = load_plan(output, layout)
    if plan is not None:
        return plan
    planning = load_planning(output, layout)
    if planning is None:
        return None
    kept, progress = resume_point(output, layout)
    p = progress or PlanProgress(through="", listed=0)
    return Plan(run_id=layout.run_id, shards=kept, objects=p.listed - p.skipped, listed=p.listed, skipped=p.skipped,
                incremental=planning.incremental, new=p.new, changed=p.changed, relabelled=p.relabelled,
                fingerprint=planning.fingerprint, created_at=planning.created_at)  # fmt: skip


class _Stream:
    """One pass of the listing from a resume point: chunks classified, shards cut and written, the plan sealed."""

    def __init__(self, planner: Planner, planning: Planning | None, kept: int, progress: PlanProgress | None):
        self.p = planner
        self.planning = planning
        self.next_shard = kept
        p = progress or PlanProgress(through="", listed=0)
        self.counts = {k: getattr(p, k) for k in ("listed", "skipped", "new", "changed", "relabelled")}
        self.relabel_runs: list[str] = list(p.relabel_runs)
        self.start_after = progress.through if progress is not None else None
        self.pending: list[pa.Table] = []  # kept objects not in a shard yet (fewer than a shard)
        self.pending_rows = 0
        self.writes: collections.deque[tuple[int, Future]] = collections.deque()
        self.index: index_files.RangeReader | None = None
        self.current = labelling_id(planner.fingerprint)

    def run(self) -> Plan:
        p = self.p
        skipped: list[str] = []
        with contextlib.ExitStack() as stack:  # the pool is shut down before the index copy is removed
            if p.mode != "off":  # the index on local disk, read a chunk's URI range at a time
                folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="fastsam-plan-index-")))
                self.index = index_files.RangeReader(index.local_copy(p.output, folder))
            return self._plan(skipped, stack.enter_context(
                ThreadPoolExecutor(_WRITE_THREADS, thread_name_prefix="fastsam-plan-write")))  # fmt: skip

    def _plan(self, skipped: list[str], pool: ThreadPoolExecutor) -> Plan:
        p = self.p
        self.pool = pool
        try:
            for batch in _chunks(p.listing, p.job.source, p.chunk, skipped, self.start_after):
                if p._stop.is_set():
                    raise StoreError(f"planning of run {p.layout.run_id} was stopped; run again to resume it")
                self._take(batch)
            if self.pending_rows:
                self._cut(pa.concat_tables(self.pending), None)
            self._drain(0)
        except BaseException:
            wait([fut for _, fut in self.writes])  # lists being written are kept for a resume
            with contextlib.suppress(Exception):
                self._drain(0)  # and handed out: what was planned is labelled
            raise
        if self.counts["listed"] == 0:
            s = p.job.source
            filters = f"extensions {', '.join(s.extensions)}" + (f", include {list(s.include)}" if s.include else "")
            raise EmptySourceError(
                f"source {p.source.uri} holds no object this job labels ({filters}); check source.uri and the filters"
            )
        self._ensure_planning()
        objects = self.counts["listed"] - self.counts["skipped"]
        plan = Plan(
            run_id=p.layout.run_id,
            shards=self.next_shard,
            objects=objects,
            listed=self.counts["listed"],
            skipped=self.counts["skipped"],
            incremental=p.mode,
            list_errors=ListErrors(count=len(skipped), first=skipped[:_LISTED_ERRORS]),
            fingerprint=p.fingerprint,
            created_at=self.planning.created_at if self.planning is not None else datetime.now(UTC),
            **({k: self.counts[k] for k in ("new", "changed", "relabelled")} if p.mode != "off" else {}),
            relabel_because=self._because(),
        )
        return create_plan(p.output, p.layout, plan)

    # -- one chunk ---------------------------------------------------------------------------------
    def _take(self, batch: pa.Table) -> None:
        """Classify a chunk of listed objects, cut every shard it fills, keep the rest pending."""
        n = batch.num_rows
        kinds = np.zeros(n, np.int8)  # UNCHANGED is 0
        if self.index is not None:
            listing = pa.table({"uri": index.uris(self.p.source, batch["key"]), "etag": batch["etag"]})
            current = self.current if self.p.mode == "labels" else None
            near = self.index.between(listing["uri"])  # the index rows of this chunk's URI range
            kinds = index.classify(listing, near, current).to_numpy()
            relabel = kinds == index.RELABEL
            if relabel.any() and len(self.relabel_runs) < _RELABEL_RUNS_READ:
                runs = index.labelled_by(near, listing.filter(pa.array(relabel)), self.current)
                self.relabel_runs += [r for r in runs if r not in self.relabel_runs]
        else:
            kinds[:] = index.NEW
        keep = kinds != index.UNCHANGED
        cums = {  # objects of each kind up to and including each row of the chunk
            "skipped": np.cumsum(~keep),
            "new": np.cumsum(kinds == index.NEW),
            "changed": np.cumsum(kinds == index.CHANGED),
            "relabelled": np.cumsum(kinds == index.RELABEL),
        }
        positions = np.flatnonzero(keep)
        kept = batch.take(pa.array(positions))
        start = 0
        while self.pending_rows + (kept.num_rows - start) >= self.p.size:
            take = self.p.size - self.pending_rows
            rows = pa.concat_tables([*self.pending, kept.slice(start, take)])
            at = int(positions[start + take - 1])  # the chunk row of the shard's last object
            self.pending, self.pending_rows = [], 0
            start += take
            self._cut(rows, (at, cums))
        if start < kept.num_rows:
            rest = kept.slice(start)
            self.pending.append(rest)
            self.pending_rows += rest.num_rows
        for k, c in cums.items():
            self.counts[k] += int(c[-1]) if n else 0
        self.counts["listed"] += n

    def _cut(self, rows: pa.Table, at: tuple[int, dict] | None) -> None:
        """Write one shard list; its footer says where the listing stood at its last object."""
        if at is None:  # the last shard: the listing has ended
            counts = dict(self.counts)
        else:
            row, cums = at
            counts = {"listed": self.counts["listed"] + row + 1}
            counts.update({k: self.counts[k] + int(c[row]) for k, c in cums.items()})
        progress = PlanProgress(through=rows["key"][-1].as_py(), relabel_runs=self.relabel_runs, **counts)
        table = rows.cast(SHARD_SCHEMA)
        table = table.replace_schema_metadata({**(table.schema.metadata or {}),
                                               PROGRESS_KEY: progress.model_dump_json().encode()})  # fmt: skip
        self._ensure_planning()
        shard_id = self.next_shard
        self.next_shard += 1
        key = self.p.layout.shard_list(shard_id)
        self.writes.append((shard_id, self.pool.submit(self.p.output.put, key, parquet_bytes(table))))
        self._drain(_WRITE_THREADS * 2)

    def _drain(self, keep: int) -> None:
        """Hand out shard ids whose list and every earlier one are written; wait while over `keep` are in flight."""
        while self.writes and (len(self.writes) > keep or self.writes[0][1].done()):
            shard_id, fut = self.writes.popleft()
            fut.result()  # a failed write raises here, before any later shard is handed out
            self.p._ready.put(shard_id)

    def _ensure_planning(self) -> None:
        """Create planning.json before the first shard list (a resumed planner has it)."""
        if self.planning is not None:
            return
        p = self.p
        record = Planning(run_id=p.layout.run_id, incremental=p.mode, fingerprint=p.fingerprint,
                          created_at=datetime.now(UTC))  # fmt: skip
        if not p.output.create(p.layout.planning, record.model_dump_json(indent=2).encode()):
            other = load_planning(p.output, p.layout)
            if other is not None:
                check_same_job(other, p.fingerprint)  # type: ignore[arg-type]
                record = other
        self.planning = record

    def _because(self) -> list[str]:
        """The labelling fields in which the runs that labelled relabelled objects differ from this job."""
        because: list[str] = []
        for run_id in self.relabel_runs[:_RELABEL_RUNS_READ]:
            earlier = load_plan(self.p.output, RunLayout(run_id))
            if earlier is not None:
                fields = differences(labelling(earlier.fingerprint), labelling(self.p.fingerprint))
                because += [f for f in fields if f not in because]
        return because


def _chunks(listing: Listing, spec: SourceSpec, chunk: int, skipped: list[str], start_after: str | None):
    """The objects the job labels, after `start_after`, as SHARD_SCHEMA tables of `chunk` rows (the last fewer).

    Raises:
        UnorderedListingError: the listing's keys do not strictly increase (a planner needs key order).
    """
    last = start_after
    pending: list[pa.Table] = []
    rows = 0
    for t in listing.batches(skipped, start_after):
        if not t.num_rows:
            continue
        _check_order(listing, t["key"], last)
        last = t["key"][-1].as_py()
        t = t.filter(_wanted(t["key"], spec))
        pending.append(t)
        rows += t.num_rows
        while rows >= chunk:
            whole = pa.concat_tables(pending)
            yield whole.slice(0, chunk)
            pending, rows = [whole.slice(chunk)], whole.num_rows - chunk
    if rows:
        yield pa.concat_tables(pending)


def _check_order(listing: Listing, keys: pa.ChunkedArray, last: str | None) -> None:
    """Refuse keys that do not strictly increase, from `last` (the previous batch's last key) on."""
    before, after = keys.slice(0, len(keys) - 1), keys.slice(1)
    if last is not None:  # the first key is compared with the last one before it too
        before, after = pa.chunked_array([pa.array([last], pa.string()), *before.chunks], pa.string()), keys
    bad = pc.less_equal(after, before)
    if pc.any(bad).as_py():
        i = pc.index(bad, True).as_py()
        raise UnorderedListingError(
            f"{listing.uri} listed {after[i].as_py()!r} after {before[i].as_py()!r}: not in key order; a store must "
            "list in key order (UTF-8 bytes, as S3 does)"
        )


def _wanted(keys: pa.ChunkedArray, spec: SourceSpec) -> pa.ChunkedArray:
    """Which keys the job labels (`SourceSpec.wants`): extensions vectorised, include globs per key."""
    if spec.include:
        return pa.chunked_array([pa.array([spec.wants(k) for k in keys.to_pylist()], pa.bool_())])
    lower = pc.utf8_lower(keys)
    mask = None
    for ext in spec.extensions:
        hit = pc.ends_with(lower, ext)
        mask = hit if mask is None else pc.or_(mask, hit)
    return mask


def list_source(
    store: ObjectStore, spec: SourceSpec, skipped: list[str] | None = None, storage: StorageSpec | None = None
) -> pa.Table:
    """Every object the job labels, as one SHARD_SCHEMA table in key order (small sources, tools and tests)."""
    listing = open_listing(spec, storage, source=store)
    chunks = list(_chunks(listing, spec, CHUNK, skipped if skipped is not None else [], None))
    return pa.concat_tables([SHARD_SCHEMA.empty_table(), *chunks])


def plan_run(*args: Any, **kwargs: Any) -> Plan:
    """`Planner(*args, **kwargs).run()`: plan the run in this thread (or load or resume its plan).

    Raises:
        RunMismatchError: the run was planned by another job.
        EmptySourceError: the listing holds nothing the job labels (nothing is written).
    """
    return Planner(*args, **kwargs).run()
