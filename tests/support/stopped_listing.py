"""`python -m tests.support.stopped_listing JOB RUN_ID`: `fastsam-label run` whose source listing fails midway.

The listing of the job's source folder raises StoreUnavailableError after `AFTER` objects (a bucket
that starts throttling), two objects a page and two a planner chunk, so shards are planned and
labelled before it fails. Run in its own process: its Ray cluster and Prefect server end with it.
"""

from __future__ import annotations

import sys

import flows.run
import workers.runs.planner
import workers.storage.listings
from schemas.errors import StoreUnavailableError
from workers.storage import LocalStore

AFTER = 7


class ListingFails(LocalStore):
    """A source folder whose listing fails after AFTER objects."""

    def list(self, prefix: str = "", skipped=None, start_after=None):
        for n, obj in enumerate(super().list(prefix, skipped, start_after)):
            if n == AFTER:
                raise StoreUnavailableError(f"{self.uri}: SlowDown after 5 attempts; try again later")
            yield obj


if __name__ == "__main__":
    from flows.cli import main

    workers.runs.planner.CHUNK = 2
    workers.storage.listings.BATCH = 2
    flows.run.open_store = lambda uri, storage=None: ListingFails(uri)
    sys.exit(main(["run", sys.argv[1], "--run-id", sys.argv[2]]))
