"""Run-level operations on the output store: plan, resume state, commit, status.

A run is planned once: `runs/{run_id}/plan.json` is created exclusively and records the fingerprint
of the job that planned it (schemas.fingerprint). Running the same run id again resumes that plan
(even if the bucket has changed since) only with a job of the same fingerprint; another job is
refused, naming the fields that differ. A committed run (`_SUCCESS`) never changes again.
"""

from __future__ import annotations

import json
import secrets
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import pyarrow as pa
from pydantic import BaseModel, ValidationError

from schemas.errors import EmptySourceError, ObjectNotFoundError, RunDamagedError, RunIncompleteError, RunMismatchError
from schemas.fingerprint import differences
from schemas.job import Job
from schemas.layout import RunLayout, parse_shard
from schemas.manifest import ListErrors, RunManifest, RunState, RunSummary, ShardMarker, ShardState
from workers import commit, index, report
from workers.shards import list_source, read_parquet, write_shard_list
from workers.store import ObjectStore, open_store

#: Parallel requests when a commit reads or repairs many shards.
_IO_THREADS = 16
#: Folders that could not be listed named in a plan (the rest are counted).
_LISTED_ERRORS = 20


class Plan(BaseModel):
    """What a run will label.

    Attributes:
        run_id: the run.
        shards: number of shards (ids 0..shards-1).
        objects: source objects in the plan.
        listed: objects the source listing matched before incremental filtering.
        skipped: objects left out because an earlier committed run labelled the same URI and ETag.
        incremental: whether earlier runs were consulted.
        list_errors: parts of the source that could not be listed (their objects are not in the plan).
        fingerprint: the planning job's fingerprint (schemas.fingerprint).
        created_at: UTC time the plan was made.
    """

    run_id: str
    shards: int
    objects: int
    listed: int
    skipped: int = 0
    incremental: bool = False
    list_errors: ListErrors = ListErrors()
    fingerprint: dict
    created_at: datetime


def _load(output: ObjectStore, key: str, model: type[BaseModel], what: str):
    """A JSON document of the run, or None when it does not exist.

    Raises:
        RunDamagedError: it exists but is not a valid `model` (one line naming it, not a pydantic dump).
    """
    try:
        data = output.get(key)
    except ObjectNotFoundError:
        return None
    try:
        return model.model_validate_json(data)
    except ValidationError as e:
        first = e.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"]) or "the document"
        raise RunDamagedError(
            f"{output.uri_of(key)} is not a valid {what} ({e.error_count()} problem(s), first: {where}: "
            f"{first['msg']}); it was changed or damaged after it was written: restore it, or label again under a "
            "new run id"
        ) from None


def load_plan(output: ObjectStore, layout: RunLayout) -> Plan | None:
    """The run's plan, or None when it was never planned.

    Raises:
        RunDamagedError: plan.json exists but is not a plan.
    """
    return _load(output, layout.plan, Plan, "run plan")


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
    incremental: bool = False,
) -> Plan:
    """List, filter, sort and cut the source into shards; write the shard lists, then create the plan.

    Returns the existing plan when the run was planned before by a job of the same fingerprint.

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
    if incremental:
        listing = pa.table({"uri": index.uris(source, objects["key"]), "etag": objects["etag"]})
        objects = objects.filter(index.unseen(listing, index.load(output)))
        del listing
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
        incremental=incremental,
        list_errors=list_errors,
        fingerprint=fingerprint,
        created_at=datetime.now(UTC),
    )
    if not output.create(layout.plan, plan.model_dump_json(indent=2).encode()):
        other = load_plan(output, layout)
        if other is not None:
            check_same_job(other, fingerprint)
        from schemas.errors import RunBusyError

        raise RunBusyError(f"run {layout.run_id} was planned by another flow at the same time; let that flow finish")
    return plan


def done_markers(output: ObjectStore, layout: RunLayout) -> dict[int, ShardMarker]:
    """The markers of the run's done shards, by shard id (one listing, then one read per shard)."""
    shard_ids = [i for o in output.list(layout.done_prefix) if (i := parse_shard(o.key)) is not None]
    with ThreadPoolExecutor(_IO_THREADS) as pool:
        markers = pool.map(lambda i: commit.read_marker(output, layout, i), shard_ids)
    return {m.summary.shard_id: m for m in markers if m is not None}


def summary_of(
    output: ObjectStore, layout: RunLayout, plan: Plan, markers: dict[int, ShardMarker], state: RunState, **extra
) -> RunSummary:
    """The run's summary over its done shards."""
    return RunSummary.of_shards(
        layout.run_id,
        output.uri_of(layout.prefix.rstrip("/")),
        state,
        plan.shards,
        plan.listed,
        plan.skipped,
        (markers[i].summary for i in sorted(markers)),
        list_errors=plan.list_errors,
        **extra,
    )


def is_committed(output: ObjectStore, layout: RunLayout) -> bool:
    """Whether the run's _SUCCESS marker exists."""
    return output.head(layout.success) is not None


def commit_run(
    job: Job,
    output: ObjectStore,
    layout: RunLayout,
    code_version: str,
    started_at: datetime,
) -> RunManifest:
    """Settle every shard, write the manifest and the report, index the run, write _SUCCESS.

    A committed run is left as it is.

    Raises:
        RunIncompleteError: naming the shards that are not done.
        commit.ShardCommitError: a shard's files cannot be made its marker's.
    """
    if is_committed(output, layout):
        manifest = load_manifest(output, layout)
        if manifest is not None:
            return manifest
    plan = load_plan(output, layout)
    if plan is None:
        raise RunIncompleteError(f"run {layout.run_id} has no plan under {output.uri}; plan it first")
    markers = done_markers(output, layout)
    missing = [i for i in range(plan.shards) if i not in markers]
    if missing:
        raise RunIncompleteError(f"run {layout.run_id} cannot be committed: shards {missing[:20]} are not done")
    ordered = [markers[i] for i in range(plan.shards)]
    with ThreadPoolExecutor(_IO_THREADS) as pool:
        list(pool.map(lambda m: commit.settle(output, layout, m), ordered))
        images = list(pool.map(lambda m: read_parquet(output, m.files["images"].key, "images"), ordered))
    for obj in list(output.list(layout.attempts_prefix)):  # every attempt's copies, winners' included
        output.delete(obj.key)
    summary = summary_of(output, layout, plan, markers, "committed")
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
        shards=[ShardState(shard_id=m.summary.shard_id, attempt_id=m.attempt_id, summary=m.summary) for m in ordered],
        summary=summary,
        started_at=started_at,
        finished_at=datetime.now(UTC),
    )
    output.put(layout.manifest, manifest.model_dump_json(indent=2).encode())
    report.write(output, open_store(job.source.uri, job.storage), layout, manifest, images)
    index.add_run(output, layout.run_id, images)
    output.put(layout.success, b"")
    return manifest


def load_manifest(output: ObjectStore, layout: RunLayout) -> RunManifest | None:
    """The committed run's manifest, or None.

    Raises:
        RunDamagedError: manifest.json exists but is not a manifest.
    """
    return _load(output, layout.manifest, RunManifest, "run manifest")


def new_run_id() -> str:
    """A unique run id: the UTC time and a random suffix, e.g. 20261121T031500Z-3f9a2c."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + secrets.token_hex(3)
