"""Runs, in the driver: what a run is made of in the output store, and how it gets there.

Planning (`planner`, `plan`), one flow per run (`lease`), the exactly-once shard commit (`attempts`, `parts`),
the run commit and its state (`commit`), reading a committed run (`committed`), and the index of
what committed runs labelled (`index`).

The run-level steps most callers need are re-exported here: `from workers import runs; runs.plan_run(...)`.
"""

from workers.runs.commit import (
    commit_run,
    done_markers,
    done_shard_ids,
    done_summaries,
    is_committed,
    load_manifest,
    summary_of,
)
from workers.runs.plan import check_same_job, load_plan, new_run_id, plan_copy
from workers.runs.planner import Planner, load_planning, plan_run

__all__ = [
    "Planner",
    "check_same_job",
    "commit_run",
    "done_markers",
    "done_shard_ids",
    "done_summaries",
    "is_committed",
    "load_manifest",
    "load_plan",
    "load_planning",
    "new_run_id",
    "plan_copy",
    "plan_run",
    "summary_of",
]
