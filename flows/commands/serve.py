"""`fastsam-label serve [JOB] --cron CRON`: the flow as a Prefect deployment on a schedule."""

from __future__ import annotations

import argparse

from flows.commands.jobs import job_fields
from flows.prefect_server import offline
from flows.run import allowed
from schemas.job_file import load_job


def main(args: argparse.Namespace) -> int:
    """Serve until stopped.

    The job is validated and held to the operator's policy now, so a bad job fails before serving;
    each scheduled run prepares it again (flows.run.prepare), in its own process.
    """
    offline()
    from flows.label import label_collection

    job = load_job(args.job, **job_fields(args))
    allowed(job)
    print(f"serving deployment label-collection/{args.name} on cron {args.cron!r} (Ctrl-C to stop)")
    label_collection.serve(
        name=args.name,
        cron=args.cron,
        parameters={"job": job.model_dump(mode="json"), "incremental": "off" if args.full else args.incremental},
        limit=1,  # one run at a time: overlapping incremental runs would label the same new objects
        pause_on_shutdown=False,
    )
    return 0
