"""The Prefect flow `label_collection`: check -> lease -> plan -> label shards on the Ray pool -> commit -> report.

After the commit the run is appended to the Delta tables under {output}/tables/ (workers.tables).

Only the job (a small dict), run and shard ids and shard summaries travel through Prefect; key
lists live in the output store and image bytes never leave the actors.

Before any work the run is prepared (flows.run.prepare: the job validated and held to the
operator's policy, the source, output and weights checked in seconds, their hashes pinned), by the
caller (the CLI, the demo) or here for a deployment run. Then the flow takes the run's lease (one
flow per run id), plans the run as a stream (or resumes it; a plan made by another job is
refused) while the shards that are not done are labelled on the pool the caller started ahead (or
its own) as their lists are written, and commits.

Prefect tracks coarse units, a constant number of task runs per flow run whatever the number of
shards: plan, label-shards (the pool dispatches every shard to the Ray actors, waiting on
completions), commit, publish-tables. Per-shard progress lives in the shard markers, which the
CLI's progress bar, `status`, the commit and the report read.

Retries, each in one place: botocore retries store requests; the pool re-dispatches shards whose
actor died and tries a shard again when its error is transient (the store was unavailable);
Prefect retries the commit and the publish on transient errors. A deterministic failure is
labelled once and reported with its cause.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_link_artifact, create_markdown_artifact
from prefect.cache_policies import NONE
from prefect.futures import wait

from flows.run import open_planner, prepare
from schemas.errors import JobError, RunBusyError, RunFailedError, StoreAccessError, is_transient
from schemas.job import Job
from schemas.layout import RunLayout
from schemas.manifest import Plan, RunSummary, ShardSummary
from workers import runs
from workers.outputs import report
from workers.ray.pool import PoolStart
from workers.runs import Planner
from workers.runs.lease import RunLease
from workers.storage import ObjectStore, open_store


def code_version() -> str:
    """The installed fastsam-label version."""
    try:
        return version("fastsam-label")
    except PackageNotFoundError:
        return "unknown"


def transient_only(task, task_run, state) -> bool:
    """Prefect's retry condition: retry only errors that may pass (schemas.errors.is_transient)."""
    try:
        exc = state.result(raise_on_failure=False)
    except Exception:  # the result could not be read: do not guess
        return False
    return is_transient(exc)


@task(name="plan", cache_policy=NONE)
def plan_task(planner: Planner) -> Plan:
    """Plan the run as a stream (shard ids reach the labelling as their lists are written), or resume it.

    A sealed plan is loaded; a plan made by another job is refused.
    """
    return planner.run()


@task(name="label-shards", cache_policy=NONE)
def label_shards_task(spec: Job, layout: RunLayout, shard_ids: Iterable[int], lease: RunLease,
                      ahead: PoolStart | None) -> tuple[dict[int, str], int]:  # fmt: skip
    """Label every shard the plan hands out on the Ray pool: one task run for all of them (Ray dispatches)."""
    return _label_shards(spec, layout, shard_ids, lease, ahead)


@task(name="commit", retries=2, retry_delay_seconds=[5, 30], retry_condition_fn=transient_only, cache_policy=NONE)
def commit_task(job: Job, run_id: str, started_at: datetime) -> RunSummary:
    """Settle every shard, index the run, write the manifest and _SUCCESS."""
    output = open_store(job.output, job.storage)
    return runs.commit_run(job, output, RunLayout(run_id), code_version(), started_at, report.at_commit).summary


@task(name="publish-tables", retries=2, retry_delay_seconds=[5, 30], retry_condition_fn=transient_only,
      cache_policy=NONE)  # fmt: skip
def publish_task(job: Job, run_id: str) -> dict[str, int]:
    """Append the committed run to the Delta tables under {output}/tables/ (once; nothing when `job.tables` is off)."""
    if not job.tables:
        return {}
    from workers.tables import delta

    return delta.publish_run(open_store(job.output, job.storage), run_id)


def report_markdown(summary: RunSummary) -> str:
    """The summary as a Markdown artifact."""
    c = summary.counts
    lines = [
        f"# fastsam-label run `{summary.run_id}`: {summary.state}",
        f"Output: `{summary.output}`",
        "",
        "| objects | labelled | failed | masks | skipped (unchanged) | new | changed | relabelled | seconds "
        "| images/s |",
        "|---|---|---|---|---|---|---|---|---|---|",
        f"| {c.objects} | {c.labelled} | {c.failed} | {c.masks} | {c.skipped} | {c.new} | {c.changed} | "
        f"{c.relabelled} | {summary.seconds} | {summary.images_per_second} |",
        "",
        "| error kind | objects |",
        "|---|---|",
        *[f"| {k} | {v} |" for k, v in sorted(summary.errors_by_kind.items())],
        "",
        "| stage | seconds (summed over images) |",
        "|---|---|",
        *[f"| {k} | {v} |" for k, v in summary.stage_seconds.items()],
    ]
    if summary.failed_shards:
        lines += ["", "Failed shards:", *[f"- {k}: {v}" for k, v in summary.failed_shards.items()]]
    return "\n".join(lines)


@flow(name="label-collection", log_prints=True)
def label_collection(
    job: dict | None = None,
    run_id: str | None = None,
    incremental: bool | str = False,
    prepared: Any = None,  # a PreparedRun (typed Any: deployment runs validate parameters, and never pass one)
    pool: Any = None,  # a PoolStart
) -> dict:
    """Label every image of the job's source; returns the run summary (RunSummary as a dict).

    Args:
        job: the job as a dict (the fields of `schemas.Job`), prepared here (flows.run.prepare);
            or None when `prepared` is given.
        run_id: reuse an id to resume that run; None = a new unique id (with `job` only).
        incremental: skip objects earlier committed runs labelled: "labels" (or True) unless their labels
            came from another labelling fingerprint, "source" whatever labelled them; "off" (False) labels all.
        prepared: a run prepared by the caller (the CLI, the demo), used as it is.
        pool: a Labeler pool the caller started ahead for the prepared job; None = start one here.

    Raises:
        JobError, CheckpointError, PromptTableError: the job or its inputs are wrong (nothing written).
        StoreError: a store cannot be reached or refuses access.
        RunBusyError: another flow holds the run.
        RunFailedError: some shards failed; run again with the same run id after fixing the cause.
    """
    log = get_run_logger()
    started = datetime.now(UTC)
    t0 = time.perf_counter()
    if prepared is None:
        if job is None:
            raise JobError("label_collection needs a job (or a prepared run); pass job=...")
        prepared = prepare(job, run_id)
    spec, layout, output = prepared.job, prepared.layout, prepared.output
    with RunLease(output, layout) as lease:
        sealed = runs.load_plan(output, layout)
        if sealed is not None and runs.is_committed(output, layout):
            runs.check_same_job(sealed, prepared.fingerprint)
            _tell(log, spec, layout, sealed)
            publish_task(spec, layout.run_id)  # a commit that could not reach the tables is healed here
            summary = runs.load_manifest(output, layout).summary.model_copy(update={"labelled_now": 0})
            print(summary.one_line())
            return summary.model_dump(mode="json")
        planner = open_planner(prepared, incremental)
        done = runs.done_shard_ids(output, layout)
        if done:
            log.info("run %s: %d shards already done", layout.run_id, len(done))
        planning = plan_task.submit(planner)
        todo = (i for i in planner.shard_ids() if i not in done)
        try:
            failed, labelled_now = label_shards_task(spec, layout, todo, lease, pool)
        except BaseException:
            planner.stop()
            wait([planning])
            raise
        plan = planning.result()
        _tell(log, spec, layout, plan)
        seconds = time.perf_counter() - t0
        extra = {
            "seconds": round(seconds, 2),
            "labelled_now": labelled_now,
            "images_per_second": round(labelled_now / seconds, 2) if seconds > 0 else None,
        }
        if failed:
            done_now = runs.done_summaries(output, layout)
            summary = runs.summary_of(output, layout, plan, done_now, "failed", failed_shards=failed, **extra)
            _report(summary)
            first = next(iter(failed.items()))
            raise RunFailedError(
                f"run {layout.run_id}: {len(failed)} shard(s) failed (shard {first[0]}: {first[1]}); fix the cause, "
                f"then run again with --run-id {layout.run_id} to resume",
                summary,
            )
        summary = commit_task(spec, layout.run_id, started).model_copy(update=extra)
        publish_task(spec, layout.run_id)
    _report(summary, output, layout)
    return summary.model_dump(mode="json")


def _tell(log, spec: Job, layout: RunLayout, plan: Plan) -> None:
    """Log what the plan found: folders it could not list, what an incremental plan skipped, its size."""
    if (unlisted := plan.list_errors.warning(spec.source.uri)) is not None:
        log.warning(unlisted)
    if (line := plan.incremental_line()) is not None:
        log.info("run %s: %s", layout.run_id, line)
    log.info("run %s: %d objects planned in %d shards", layout.run_id, plan.objects, plan.shards)


def _label_shards(
    spec: Job, layout: RunLayout, shard_ids: Iterable[int], lease: RunLease, ahead: PoolStart | None
) -> tuple[dict[int, str], int]:
    """Label the shards on a pool as they are planned; (failed shard -> why, objects labelled).

    Raises:
        StoreAccessError: a shard failed because a store refuses access (every other shard would too).
        PoolError: no Labeler actor could start.
        RunBusyError: another flow took the run over.
        whatever planning raised (an empty source, a listing that failed).
    """
    from schemas.errors import PoolError, ShardError
    from workers.ray.pool import LabelerPool

    failed: dict[int, str] = {}
    labelled = 0
    with ahead.take() if ahead is not None else LabelerPool(spec) as pool:
        for shard_id, result in pool.map(layout.run_id, shard_ids):
            if lease.lost:
                raise RunBusyError(lease.lost + "; this flow stopped")
            if isinstance(result, ShardSummary):
                labelled += result.objects
                continue
            cause = result.cause if isinstance(result, ShardError) else result
            if isinstance(cause, StoreAccessError | PoolError):
                raise cause  # the store refuses us, or no actor can run: every other shard would fail too
            failed[shard_id] = f"{type(cause).__name__}: {cause}"
    return failed, labelled


def _report(summary: RunSummary, output: ObjectStore | None = None, layout: RunLayout | None = None) -> None:
    """The Markdown artifact, a link artifact to the run's HTML report when there is one, and the last line."""
    key = _artifact_key(summary.run_id)
    create_markdown_artifact(markdown=report_markdown(summary), key=f"fastsam-label-{key}", description="run summary")
    if output is not None and layout is not None and output.head(layout.report) is not None:
        link = output.uri_of(layout.report)
        create_link_artifact(link=link, link_text=f"run report {summary.run_id}", key=f"fastsam-label-report-{key}")
        print(f"report: {link}")
    print(summary.one_line())


def _artifact_key(run_id: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in run_id.lower()).strip("-")[:60] or "run"
