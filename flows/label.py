"""The Prefect flow `label_collection`: validate -> plan -> label shards on the Ray pool -> commit -> report.

Only the job (a small dict), run and shard ids and shard summaries travel through Prefect; key
lists live in the output store and image bytes never leave the actors.

Resume: the same run id reuses its plan and skips shards whose completion marker exists.
Incremental: the plan leaves out objects (key + ETag) that earlier committed runs under the same
output already labelled.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NONE
from prefect.futures import wait
from prefect.tasks import exponential_backoff

from schemas.job import Job, check_run_id, parse_job
from schemas.manifest import ShardSummary
from workers import runs
from workers.sidecar import load_prompt_table
from workers.store import open_store

#: Pools of the runs in progress in this process, by run id (tasks look them up; never serialized).
_POOLS: dict = {}
#: Called as progress(done, planned) while shards finish (the CLI's progress bar); in-process only.
PROGRESS: list = []


def code_version() -> str:
    """The installed fastsam-label version."""
    try:
        return version("fastsam-label")
    except PackageNotFoundError:
        return "unknown"


class RunFailedError(RuntimeError):
    """Some shards failed after every retry; the run was not committed."""


@task(name="plan", retries=2, retry_delay_seconds=[5, 30], cache_policy=NONE)
def plan_task(job: Job, run_id: str, incremental: bool) -> runs.Plan:
    """List and shard the source (or load the existing plan of this run id)."""
    source, output = open_store(job.source.uri, job.storage), open_store(job.output, job.storage)
    return runs.plan_run(job, source, output, run_id, incremental)


@task(name="label-shard", retries=3, retry_delay_seconds=exponential_backoff(backoff_factor=5), cache_policy=NONE)
def label_shard_task(run_id: str, shard_id: int) -> ShardSummary:
    """Label one shard on the run's Ray pool (blocks while every actor is busy)."""
    return _POOLS[run_id].label(run_id, shard_id)


@task(name="commit", retries=2, retry_delay_seconds=[5, 30], cache_policy=NONE)
def commit_task(job: Job, run_id: str, started_at: datetime) -> dict:
    """Write the manifest and _SUCCESS (every shard is done)."""
    manifest = runs.commit_run(job, open_store(job.output, job.storage), run_id, code_version(), started_at)
    return {"counts": manifest.counts, "errors_by_kind": manifest.errors_by_kind}


def summarize(
    job: Job,
    run_id: str,
    plan: runs.Plan,
    done: dict[int, ShardSummary],
    failed: dict[int, str],
    seconds: float,
    labelled_now: int,
) -> dict:
    """The run's summary: counts, errors by kind, throughput and per-stage seconds.

    Counts cover every done shard of the run (also those done by an earlier, interrupted attempt);
    `images_per_second` only the objects labelled by this attempt, over its wall time.
    """
    counts, errors, stages = runs.totals(list(done.values()))
    return {
        "run_id": run_id,
        "output": f"{job.output.rstrip('/')}/runs/{run_id}/",
        "state": "failed" if failed else "done",
        "shards": {"planned": plan.shards, "done": len(done), "failed": sorted(failed)},
        "counts": {**counts, "listed": plan.listed, "skipped_unchanged": plan.skipped},
        "errors_by_kind": errors,
        "failed_shards": {str(k): v for k, v in sorted(failed.items())},
        "seconds": round(seconds, 2),
        "labelled_now": labelled_now,
        "images_per_second": round(labelled_now / seconds, 2) if seconds > 0 else None,
        "stage_seconds": stages,
    }


def report_markdown(summary: dict) -> str:
    """The summary as a Markdown artifact."""
    c = summary["counts"]
    lines = [
        f"# fastsam-label run `{summary['run_id']}`: {summary['state']}",
        f"Output: `{summary['output']}`",
        "",
        "| objects | labelled | failed | masks | skipped (unchanged) | seconds | images/s |",
        "|---|---|---|---|---|---|---|",
        f"| {c['objects']} | {c['labelled']} | {c['failed']} | {c['masks']} | {c['skipped_unchanged']} | "
        f"{summary['seconds']} | {summary['images_per_second']} |",
        "",
        "| error kind | objects |",
        "|---|---|",
        *[f"| {k} | {v} |" for k, v in sorted(summary["errors_by_kind"].items())],
        "",
        "| stage | seconds (summed over images) |",
        "|---|---|",
        *[f"| {k} | {v} |" for k, v in summary["stage_seconds"].items()],
    ]
    if summary["failed_shards"]:
        lines += ["", "Failed shards:", *[f"- {k}: {v}" for k, v in summary["failed_shards"].items()]]
    return "\n".join(lines)


@flow(name="label-collection", log_prints=True)
def label_collection(job: dict, run_id: str | None = None, incremental: bool = False) -> dict:
    """Label every image of the job's source; returns the run summary.

    Args:
        job: the job as a dict (the fields of `schemas.Job`).
        run_id: reuse an id to resume that run; None = a new id from the UTC time.
        incremental: label only objects that are new or changed since earlier committed runs.
    """
    log = get_run_logger()
    started = datetime.now(UTC)
    t0 = time.perf_counter()
    spec = parse_job(job, environ={})  # environment overrides were applied by whoever built `job`
    run_id = check_run_id(run_id or runs.new_run_id())
    load_prompt_table(spec)  # a bad prompt table fails here, by row, not in every actor
    plan = plan_task(spec, run_id, incremental)
    output = open_store(spec.output, spec.storage)
    done = runs.done_shards(output, run_id)
    already = set(done)
    todo = [i for i in range(plan.shards) if i not in done]
    log.info("run %s: %d shards planned, %d already done, %d to label", run_id, plan.shards, len(done), len(todo))
    failed: dict[int, str] = {}
    if todo:
        from workers.pool import LabelerPool

        pool = LabelerPool(spec)
        _POOLS[run_id] = pool
        try:
            window = 2 * spec.compute.num_actors  # shards queued ahead of the actors
            running: dict = {}
            while todo or running:
                while todo and len(running) < window:
                    shard_id = todo.pop(0)
                    running[shard_id] = label_shard_task.submit(run_id, shard_id)
                wait(list(running.values()), timeout=1.0)
                for shard_id, fut in list(running.items()):
                    if fut.state.is_final():
                        del running[shard_id]
                        if fut.state.is_completed():
                            done[shard_id] = fut.result()
                        else:
                            failed[shard_id] = str(fut.state.message or fut.state.name)
                        for callback in PROGRESS:
                            callback(len(done) + len(failed), plan.shards)
        finally:
            _POOLS.pop(run_id, None)
            pool.close()
    labelled_now = sum(done[i].objects for i in done if i not in already)
    summary = summarize(spec, run_id, plan, done, failed, time.perf_counter() - t0, labelled_now)
    if not failed:
        commit_task(spec, run_id, started)
    create_markdown_artifact(
        markdown=report_markdown(summary), key=f"fastsam-label-{_artifact_key(run_id)}", description="run summary"
    )
    print(_one_line(summary))
    if failed:
        raise RunFailedError(f"run {run_id}: shards {sorted(failed)} failed; run again with the same run id to resume")
    return summary


def _artifact_key(run_id: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in run_id.lower()).strip("-")[:60] or "run"


def _one_line(summary: dict) -> str:
    c = summary["counts"]
    return (
        f"run {summary['run_id']} {summary['state']}: {c['objects']} objects, {c['labelled']} labelled, "
        f"{c['failed']} failed, {c['masks']} masks, {summary['images_per_second']} images/s -> {summary['output']}"
    )
