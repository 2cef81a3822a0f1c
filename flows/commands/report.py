"""`fastsam-label report RUN --output URI`: a committed run's HTML report again, from its own source and tables."""

from __future__ import annotations

import argparse

from schemas.job import StorageSpec
from workers.outputs import report
from workers.runs.committed import CommittedRun
from workers.storage import open_store


def main(args: argparse.Namespace) -> int:
    """Write `runs/RUN/report.html`; print its URI."""
    storage = StorageSpec(endpoint_url=args.endpoint_url)
    run = CommittedRun(open_store(args.output, storage), args.run_id)
    rows = report.ReportRows(run.states)
    for state in run.states:  # one shard's images table at a time: only the rows the report shows are kept
        rows.add(run.table("images", state))
    print(report.write(run.output, run.source(storage), run.layout, run.manifest, run.states, rows))
    return 0
