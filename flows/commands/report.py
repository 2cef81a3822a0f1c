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
    images = [run.table("images", s) for s in run.manifest.shards]
    print(report.write(run.output, run.source(storage), run.layout, run.manifest, images))
    return 0
