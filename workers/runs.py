"""Run-level operations on the output store: plan, resume state, incremental filtering, commit, status.

    runs/{run_id}/plan.json       written after every shard list: the plan is complete
    runs/{run_id}/manifest.json   written at commit, when every shard is done
    runs/{run_id}/_SUCCESS        written last: the run is complete

A plan is made once per run id; running the same run id again reuses it (even if the bucket has
changed since), so a resumed run labels exactly the shards the first attempt planned.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from datetime import UTC, datetime

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel

from schemas.job import Job
from schemas.manifest import RunManifest, ShardState, ShardSummary
from workers.shards import cut, list_source, read_parquet, run_prefix, shard_summary, write_shard_list
from workers.store import ObjectNotFoundError, ObjectStore, safe_key

#: Failures worth another try in an incremental run (the object may read fine next time).
TRANSIENT = ("read_error", "label_error")


class Plan(BaseModel):
    """What a run will label.

    Attributes:
        run_id: the run.
        shards: number of shards (ids 0..shards-1).
        objects: source objects in the plan.
        listed: objects the source listing matched before incremental filtering.
        skipped: objects left out because an earlier committed run labelled the same key and ETag.
        incremental: whether earlier runs were consulted.
        created_at: UTC time the plan was made.
    """

    run_id: str
    shards: int
    objects: int
    listed: int
    skipped: int = 0
    incremental: bool = False
    created_at: datetime


def _key(run_id: str, name: str) -> str:
    return safe_key(run_prefix(run_id), name)


def load_plan(output: ObjectStore, run_id: str) -> Plan | None:
    """The run's plan, if it was completed."""
    try:
        return Plan.model_validate_json(output.get(_key(run_id, "plan.json")))
    except ObjectNotFoundError:
        return None


def committed_runs(output: ObjectStore) -> list[str]:
    """Ids of the runs under `output` that have a _SUCCESS marker, in key order."""
    markers = (o.key for o in output.list("runs/"))
    return sorted(k.split("/")[1] for k in markers if k.count("/") == 2 and k.endswith("/_SUCCESS"))


def labelled_before(output: ObjectStore, exclude_run: str | None = None) -> set[tuple[str, str | None]]:
    """(key, etag) of every object an earlier committed run labelled, or failed on for good."""
    seen: set[tuple[str, str | None]] = set()
    for run_id in committed_runs(output):
        if run_id == exclude_run:
            continue
        for obj in output.list(f"runs/{run_id}/images/"):
            t = read_parquet(output, obj.key, "images").select(["key", "etag", "status"])
            t = t.filter(pc.invert(pc.is_in(t["status"], value_set=pa.array(TRANSIENT))))
            seen.update(zip(t["key"].to_pylist(), t["etag"].to_pylist(), strict=True))
    return seen


def plan_run(job: Job, source: ObjectStore, output: ObjectStore, run_id: str, incremental: bool = False) -> Plan:
    """List, filter, sort and cut the source into shards; write the shard lists, then the plan.

    Returns the existing plan unchanged when the run was planned before (resume).
    """
    existing = load_plan(output, run_id)
    if existing is not None:
        return existing
    objects = list_source(source, job.source)
    listed = len(objects)
    if incremental:
        seen = labelled_before(output, exclude_run=run_id)
        objects = [o for o in objects if (o.key, o.etag) not in seen]
    shards = cut(objects, job.compute.shard_size)
    for i, objs in enumerate(shards):
        write_shard_list(output, run_id, i, objs)
    plan = Plan(
        run_id=run_id,
        shards=len(shards),
        objects=len(objects),
        listed=listed,
        skipped=listed - len(objects),
        incremental=incremental,
        created_at=datetime.now(UTC),
    )
    output.put(_key(run_id, "plan.json"), plan.model_dump_json(indent=2).encode())
    return plan


def done_shards(output: ObjectStore, run_id: str) -> dict[int, ShardSummary]:
    """Summaries of the run's complete shards, by shard id (one listing, then one read per shard)."""
    out = {}
    for obj in output.list(f"runs/{run_id}/done/"):
        name = obj.key.rsplit("/", 1)[-1]
        if name.startswith("shard-") and name.endswith(".json"):
            summary = shard_summary(output, run_id, int(name[6:-5]))
            if summary is not None:
                out[summary.shard_id] = summary
    return out


def totals(summaries: list[ShardSummary]) -> tuple[dict[str, int], dict[str, int], dict[str, float]]:
    """(counts, errors by kind, stage seconds) summed over shards."""
    errors: Counter = Counter()
    stages: Counter = Counter()
    for s in summaries:
        errors.update(s.errors_by_kind)
        stages.update(s.stage_seconds)
    counts = {
        "objects": sum(s.objects for s in summaries),
        "labelled": sum(s.labelled for s in summaries),
        "masks": sum(s.masks for s in summaries),
        "prompts": sum(s.prompts for s in summaries),
        "failed": sum(errors.values()),
    }
    return counts, dict(errors), {k: round(v, 3) for k, v in stages.items()}


def commit_run(
    job: Job,
    output: ObjectStore,
    run_id: str,
    code_version: str,
    started_at: datetime,
) -> RunManifest:
    """Write the manifest and the _SUCCESS marker; only when every planned shard is done.

    Raises:
        RuntimeError: naming the shards that are not done.
    """
    plan = load_plan(output, run_id)
    if plan is None:
        raise RuntimeError(f"run {run_id} has no plan under {output.uri}; plan it first")
    done = done_shards(output, run_id)
    missing = [i for i in range(plan.shards) if i not in done]
    if missing:
        raise RuntimeError(f"run {run_id} cannot be committed: shards {missing[:20]} are not done")
    summaries = [done[i] for i in range(plan.shards)]
    counts, errors, stages = totals(summaries)
    models = {
        "fastsam": {"name": job.model.checkpoint or "fastsam-tiny.pt (shipped)", "sha256": job.model.sha256},
        "clip": {"name": job.clip.arch if job.prompts else None, "sha256": job.clip.sha256},
    }
    images = list(output.list(f"runs/{run_id}/images/"))
    if images:  # the hash the actors verified, which is known even when the job pinned none
        row = read_parquet(output, images[0].key, "images").slice(0, 1).to_pylist()
        if row:
            models["fastsam"]["sha256"] = row[0]["model_sha256"]
    manifest = RunManifest(
        run_id=run_id,
        job=json.loads(job.model_dump_json()),
        prompts=list(job.all_prompts),
        models=models,
        code_version=code_version,
        shards=[ShardState(shard_id=s.shard_id, objects=s.objects, state="done", summary=s) for s in summaries],
        counts={**counts, "listed": plan.listed, "skipped": plan.skipped},
        errors_by_kind=errors,
        stage_seconds=stages,
        started_at=started_at,
        finished_at=datetime.now(UTC),
    )
    output.put(_key(run_id, "manifest.json"), manifest.model_dump_json(indent=2).encode())
    output.put(_key(run_id, "_SUCCESS"), b"")
    return manifest


def load_manifest(output: ObjectStore, run_id: str) -> RunManifest | None:
    """The committed run's manifest, or None."""
    try:
        return RunManifest.model_validate_json(output.get(_key(run_id, "manifest.json")))
    except ObjectNotFoundError:
        return None


def new_run_id() -> str:
    """A run id from the UTC time: 20261121T031500Z."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
