"""A run's plan: made once, bound to the job that planned it; its shards' work lists.

A run is planned once (workers.runs.planner streams it): `runs/{run_id}/plan.json` is created
exclusively and records the fingerprint of the job that planned it (schemas.fingerprint). Running
the same run id again resumes that plan (even if the bucket has changed since) only with a job of
the same fingerprint; another job is refused, naming the fields that differ. Each shard's work
list (key, size, etag) is a Parquet file under `runs/{run_id}/shards/`; only shard ids travel
between Prefect and Ray.
"""

from __future__ import annotations

import secrets
import time
from datetime import UTC, datetime

import pyarrow as pa

from schemas.errors import ObjectNotFoundError, RunBusyError, RunMismatchError
from schemas.fingerprint import differences
from schemas.layout import RunLayout
from schemas.manifest import Plan, Planning
from schemas.tables import SHARD_SCHEMA
from workers.storage import ObjectInfo, ObjectStore
from workers.storage.files import load_document, parquet_bytes, read_parquet


def load_plan(output: ObjectStore, layout: RunLayout) -> Plan | None:
    """The run's plan, or None when it was never planned.

    Raises:
        RunDamagedError: plan.json exists but is not a plan.
    """
    return load_document(output, layout.plan, Plan, "run plan")


def check_same_job(plan: Plan | Planning, fingerprint: dict) -> None:
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


def create_plan(output: ObjectStore, layout: RunLayout, plan: Plan) -> Plan:
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
    return create_plan(output, layout, plan)


def write_shard_list(store: ObjectStore, layout: RunLayout, shard_id: int, objects: pa.Table) -> None:
    """Write a shard's work list (SHARD_SCHEMA rows) to the output store."""
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
