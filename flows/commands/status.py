"""`fastsam-label status RUN --output URI`: a run's summary; exit 0 committed (every file checked), 1 not yet."""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime

from schemas.errors import RunNotFoundError
from schemas.job import StorageSpec
from schemas.layout import RunLayout
from workers import runs
from workers.runs.committed import CommittedRun
from workers.runs.lease import RunLease
from workers.runs.planner import plan_so_far
from workers.storage import open_store


def main(args: argparse.Namespace) -> int:
    """Print the run's summary (RunSummary); 0 when committed, 1 while running or incomplete.

    Raises:
        RunNotFoundError: no such run (exit 2).
        RunDamagedError: a committed run whose manifest or files are not what they should be (exit 2).
    """
    output = open_store(args.output, StorageSpec(endpoint_url=args.endpoint_url))
    layout = RunLayout(args.run_id)
    if runs.is_committed(output, layout):
        run = CommittedRun(output, layout.run_id)  # the manifest agrees with the plan,
        run.verify()  # and every file is the one it names
        print(json.dumps(run.manifest.summary.model_dump(mode="json"), indent=2))
        return 0
    plan = plan_so_far(output, layout)  # while the listing goes on: the shards planned so far
    if plan is None:
        raise RunNotFoundError(f"no run {layout.run_id} under {output.uri}: check the run id and --output")
    holder = RunLease(output, layout).holder()
    state = "running" if holder is not None and not holder.free(datetime.now(UTC)) else "incomplete"
    summary = runs.summary_of(output, layout, plan, runs.done_summaries(output, layout), state)
    print(json.dumps(summary.model_dump(mode="json"), indent=2))
    return 1
