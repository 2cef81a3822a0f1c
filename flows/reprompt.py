"""The Prefect flow `reprompt`: a committed run's masks scored against new prompts, as a new committed run.

    check (parent committed, embeddings kept, same CLIP) -> lease -> plan (the parent's shards)
    -> re-score every shard from the stored embeddings -> commit -> report

Only the text embeddings are computed; no image is read (workers.labelling.reprompt). The new run
is committed like any other (markers, manifest, index, `_SUCCESS`, report, the Delta tables), so
exports, `status` and readers of the tables treat it as a run.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NONE

from flows.label import code_version, publish_task, transient_only
from flows.run import allowed
from schemas.job import SelectionSpec, StorageSpec
from schemas.layout import RunLayout
from schemas.manifest import RunSummary
from workers import runs
from workers.labelling.reprompt import Reprompter, embeddings_run, load_embedder, reprompt_job
from workers.outputs import report
from workers.runs.committed import CommittedRun
from workers.runs.lease import RunLease
from workers.storage import open_store


@task(name="reprompt-shards", retries=2, retry_delay_seconds=[5, 30], retry_condition_fn=transient_only,
      cache_policy=NONE)  # fmt: skip
def reprompt_shards(reprompter: Reprompter, shard_ids: list[int]) -> int:
    """Re-score and commit the shards (done ones are skipped); the objects in them."""
    return reprompter.shards(shard_ids)


@flow(name="reprompt", log_prints=True)
def reprompt_run(
    output: str,
    parent: str,
    prompts: list[str],
    negatives: list[str] | None = None,
    selection: dict | None = None,
    run_id: str | None = None,
    clip_weights: str | None = None,
    endpoint_url: str | None = None,
) -> dict:
    """Score committed run `parent`'s masks against `prompts` into a new run; returns its summary (a dict).

    Args:
        output: the output the parent run is under (s3://bucket/prefix or a folder).
        parent: the committed run; it, or the run it re-prompts, kept embeddings.
        prompts: the new prompts (labels), in order.
        negatives: the new negative prompts.
        selection: `schemas.job.SelectionSpec` fields (default: the defaults).
        run_id: reuse an id to resume that reprompt run; None = a new id.
        clip_weights: where the CLIP weights are now, when they moved (same sha256).
        endpoint_url: S3-compatible endpoint for the output.

    Raises:
        JobError: the run kept no embeddings, or the prompts are invalid.
        CheckpointError: the CLIP model is not the one that made the embeddings.
        RunNotFoundError, RunNotCommittedError, RunDamagedError: the parent cannot be read.
    """
    started, t0 = datetime.now(UTC), time.perf_counter()
    store = open_store(output, StorageSpec(endpoint_url=endpoint_url))
    parent_run = CommittedRun(store, parent)
    stored = embeddings_run(store, parent)
    job = reprompt_job(parent_run, tuple(prompts), tuple(negatives or ()), SelectionSpec(**(selection or {})),
                       clip_weights, output, endpoint_url)  # fmt: skip
    job = allowed(job)
    embedder = load_embedder(job, stored)
    layout = RunLayout(run_id or runs.new_run_id())
    get_run_logger().info("run %s: re-prompting run %s with %s", layout.run_id, parent, list(prompts))
    with RunLease(store, layout):
        reprompter = Reprompter(store, parent_run, stored, job, layout.run_id, embedder)
        plan = reprompter.plan()
        if not runs.is_committed(store, layout):
            done = runs.done_shard_ids(store, layout)
            reprompt_shards(reprompter, [i for i in range(plan.shards) if i not in done])
            runs.commit_run(job, store, layout, code_version(), started, report.at_commit)
        publish_task(job, layout.run_id)
        summary: RunSummary = runs.load_manifest(store, layout).summary
    seconds = time.perf_counter() - t0
    summary = summary.model_copy(update={"seconds": round(seconds, 2)})
    print(summary.one_line())
    return summary.model_dump(mode="json")
