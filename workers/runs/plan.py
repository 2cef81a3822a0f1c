"""Planning a run: list, filter, sort and cut the source into shards, once, bound to the job that planned it.

A run is planned once: `runs/{run_id}/plan.json` is created exclusively and records the fingerprint
of the job that planned it (schemas.fingerprint). Running the same run id again resumes that plan
(even if the bucket has changed since) only with a job of the same fingerprint; another job is
refused, naming the fields that differ. Each shard's work list (key, size, etag) is a Parquet file
under `runs/{run_id}/shards/`; only shard ids travel between Prefect and Ray.
"""

from __future__ import annotations

import secrets
import time
from datetime import UTC, datetime

import pyarrow as pa
import pyarrow.compute as pc

from schemas.errors import EmptySourceError, ObjectNotFoundError, RunBusyError, RunMismatchError
from schemas.fingerprint import differences, labelling, labelling_id
from schemas.job import IncrementalMode, Job, SourceSpec, incremental_mode
from schemas.layout import RunLayout
from schemas.manifest import ListErrors, Plan
from schemas.tables import SHARD_SCHEMA
from workers.runs import index
from workers.storage import ObjectInfo, ObjectStore
from workers.storage.files import load_document, parquet_bytes, read_parquet

#: Folders that could not be listed named in a plan (the rest are counted).
_LISTED_ERRORS = 20
#: Earlier runs whose plans are read to say why objects are relabelled.
_RELABEL_RUNS_READ = 8


def load_plan(output: ObjectStore, layout: RunLayout) -> Plan | None:
    """The run's plan, or None when it was never planned.

    Raises:
        RunDamagedError: plan.json exists but is not a plan.
    """
    return load_document(output, layout.plan, Plan, "run plan")


def check_same_job(plan: Plan, fingerprint: dict) -> None:
    """Refuse to go on with a run planned by another job.

    Raises:
        RunMismatchError: naming each field that differs, with both values.
    """
    fields = differences(plan.fingerprint, fingerprint)
    if fields:
        shown = "; ".join(f"{f}: planned {plan.fingerprint.get(f)!r}, now {fingerprint.get(f)!r}" for f in fields[:6])
        raise RunMismatchError(
            f"run {plan.run_id} was planned by another job ({len(fields)} setting(s) differ: {shown}); "
            "use a new run id for this job, or resume with the job that planned it"
        )


def plan_run(
    job: Job,
    source: ObjectStore,
    output: ObjectStore,
    layout: RunLayout,
    fingerprint: dict,
    incremental: bool | IncrementalMode = False,
) -> Plan:
    """List, filter, sort and cut the source into shards; write the shard lists, then create the plan.

    Returns the existing plan when the run was planned before by a job of the same fingerprint.
    `incremental`: an IncrementalMode (True = "labels"): which earlier labels let an object be skipped.

    Raises:
        RunMismatchError: the run was planned by another job.
        EmptySourceError: the listing holds nothing the job labels (nothing is written).
    """
    existing = load_plan(output, layout)
    if existing is not None:
        check_same_job(existing, fingerprint)
        return existing
    skipped: list[str] = []
    objects = list_source(source, job.source, skipped=skipped)
    list_errors = ListErrors(count=len(skipped), first=skipped[:_LISTED_ERRORS])
    listed = objects.num_rows
    if not listed:
        s = job.source
        filters = f"extensions {', '.join(s.extensions)}" + (f", include {list(s.include)}" if s.include else "")
        raise EmptySourceError(
            f"source {source.uri} holds no object this job labels ({filters}); check source.uri and the filters"
        )
    pool = pa.default_memory_pool()
    pool.release_unused()  # Arrow's allocator keeps freed pages: building a big listing leaves many
    mode = incremental_mode(incremental)
    counts: dict = {}
    if mode != "off":
        objects, counts = _incremental(source, output, objects, fingerprint, mode)
        pool.release_unused()
    size = job.compute.shard_size
    shards = (objects.num_rows + size - 1) // size
    for i in range(shards):
        write_shard_list(output, layout, i, objects.slice(i * size, size))
    plan = Plan(
        run_id=layout.run_id,
        shards=shards,
        objects=objects.num_rows,
        listed=listed,
        skipped=listed - objects.num_rows,
        incremental=mode,
        list_errors=list_errors,
        fingerprint=fingerprint,
        created_at=datetime.now(UTC),
        **counts,
    )
    return _create(output, layout, plan)


def _create(output: ObjectStore, layout: RunLayout, plan: Plan) -> Plan:
    """Create the run's plan.json exclusively; `plan` when this call created it.

    Raises:
        RunMismatchError: another job planned the run meanwhile.
        RunBusyError: another flow planned it at the same time (with this job).
    """
    if not output.create(layout.plan, plan.model_dump_json(indent=2).encode()):
        other = load_plan(output, layout)
        if other is not None:
            check_same_job(other, plan.fingerprint)
        raise RunBusyError(f"run {layout.run_id} was planned by another flow at the same time; let that flow finish")
    return plan


def plan_copy(output: ObjectStore, layout: RunLayout, parent: Plan, fingerprint: dict) -> Plan:
    """The plan of a run whose shards are those of the committed run `parent` planned (a reprompt run).

    No listing and no shard lists: each shard is the parent's shard of the same id. Returns the
    existing plan when the run was planned before by a job of the same fingerprint.

    Raises:
        RunMismatchError: the run was planned by another job.
        RunBusyError: another flow planned it at the same time.
    """
    existing = load_plan(output, layout)
    if existing is not None:
        check_same_job(existing, fingerprint)
        return existing
    plan = Plan(
        run_id=layout.run_id,
        shards=parent.shards,
        objects=parent.objects,
        listed=parent.objects,
        fingerprint=fingerprint,
        created_at=datetime.now(UTC),
    )
    return _create(output, layout, plan)


def _incremental(
    source: ObjectStore, output: ObjectStore, objects: pa.Table, fingerprint: dict, mode: IncrementalMode
) -> tuple[pa.Table, dict]:
    """The listed objects an incremental run labels, and the plan's counts of each kind (see `index.classify`)."""
    listing = pa.table({"uri": index.uris(source, objects["key"]), "etag": objects["etag"]})
    known = index.load(output)
    current = labelling_id(fingerprint)
    kind = index.classify(listing, known, current if mode == "labels" else None)
    counts = {c["values"]: c["counts"] for c in pc.value_counts(kind).to_pylist()}
    because: list[str] = []
    if counts.get(index.RELABEL):
        relabel = listing.filter(pc.equal(kind, index.RELABEL))
        for run_id in index.labelled_by(known, relabel, current)[:_RELABEL_RUNS_READ]:
            earlier = load_plan(output, RunLayout(run_id))
            if earlier is not None:
                fields = differences(labelling(earlier.fingerprint), labelling(fingerprint))
                because += [f for f in fields if f not in because]
    del listing, known
    kept = objects.filter(pc.not_equal(kind, index.UNCHANGED))
    return kept, {
        "new": counts.get(index.NEW, 0),
        "changed": counts.get(index.CHANGED, 0),
        "relabelled": counts.get(index.RELABEL, 0),
        "relabel_because": because,
    }


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


def new_run_id() -> str:
    """A unique run id: the UTC time and a random suffix, e.g. 20261121T031500Z-3f9a2c."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + secrets.token_hex(3)
