"""`fastsam-label run [JOB] [flags]`: label a collection, with a progress bar; the summary on stdout.

The run is prepared first (flows.run.prepare: the job validated, held to the operator's policy,
preflighted and pinned), so a wrong job, store or weights file fails in seconds, before Prefect
and Ray start. Then Ray and the actors start in the background (workers.ray.pool.PoolStart) while
Prefect's temporary server starts, and the flow gets both the prepared run and that pool.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import threading
from collections.abc import Iterator

from flows.commands.jobs import job_fields
from flows.prefect_server import offline, quiet_logs, temporary_server
from flows.run import prepare
from schemas.errors import NothingToDoError, RunFailedError, StoreError
from schemas.job import Job
from schemas.job_file import load_job
from schemas.layout import RunLayout
from schemas.manifest import Plan
from workers import runs
from workers.storage import ObjectStore


def main(args: argparse.Namespace) -> int:
    """The exit code: 0 committed, 1 some shard failed, 3 nothing labelled (others: schemas.errors)."""
    if args.allow_unpinned:  # this shell's user is the operator of this run
        from schemas.operator import ENV_ALLOW_UNPINNED

        os.environ[ENV_ALLOW_UNPINNED] = "1"
    job = load_job(args.job, **job_fields(args))
    return run_job(job, args.run_id, args.incremental, debug=args.debug)[0]


def exit_code(summary: dict) -> int:
    """0 for a committed run, 3 when it labelled nothing of what it listed, 1 when it is not committed."""
    c = summary["counts"]
    if summary["state"] != "committed":
        return RunFailedError.exit_code
    if c["labelled"] == 0 and c["objects"] > 0:
        return NothingToDoError.exit_code  # (an incremental run with nothing new is not an error)
    return 0


def run_job(job: Job, run_id: str | None, incremental: bool | str, debug: bool = False) -> tuple[int, dict | None]:
    """Prepare the run, run the flow with a progress bar, print the summary; the exit code and the summary."""
    offline()
    from workers.ray import reaper
    from workers.ray.pool import PoolStart

    prepared = prepare(job, run_id)
    layout, output = prepared.layout, prepared.output
    print(f"run {layout.run_id}: labelling {job.source.uri} -> {job.output} (resume with --run-id {layout.run_id})")
    if threading.current_thread() is threading.main_thread():
        # What Ray's driver would do, had it started on this thread: finally blocks and clean-up run.
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        # Whatever this starts is stopped when this process ends, even by SIGKILL (workers.ray.reaper).
        with reaper.watch(), contextlib.ExitStack() as stack:
            pool = None if runs.is_committed(output, layout) else stack.enter_context(PoolStart(prepared.job))
            # While Ray starts: Prefect's server process, then the flow's imports, then its health check.
            stack.enter_context(temporary_server(while_starting=_import_flow))
            if not debug:
                quiet_logs()
            from flows.label import label_collection

            stack.enter_context(_progress(output, layout))
            summary = label_collection(prepared=prepared, incremental=incremental, pool=pool)
    except RunFailedError as e:
        if e.summary is not None:
            print(json.dumps(e.summary.model_dump(mode="json"), indent=2))
        print(f"error: {e}", file=sys.stderr)
        return RunFailedError.exit_code, None
    print(json.dumps(summary, indent=2))
    return exit_code(summary), summary


def _import_flow() -> None:
    """Import the flow (Prefect's client side, about 1 s of CPU) while its server starts."""
    import flows.label  # noqa: F401


@contextlib.contextmanager
def _progress(output: ObjectStore, layout: RunLayout) -> Iterator[None]:
    """A progress bar of done shards, read from the output store every second while the block runs."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    bar = Progress(
        TextColumn("labelling shards"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), transient=True
    )
    task = bar.add_task("shards", total=None)
    stop = threading.Event()
    told: list[bool] = []

    def tell(plan: Plan) -> None:  # what an incremental plan found, once, above the bar
        if not told and (line := plan.incremental_line()) is not None:
            bar.console.print(f"run {layout.run_id}: {line}", highlight=False, soft_wrap=True)
        told.append(True)

    def poll() -> None:
        total = None
        while not stop.wait(1.0):
            try:
                if total is None and (plan := runs.load_plan(output, layout)) is not None:
                    total = plan.shards
                    tell(plan)
                done = sum(1 for _ in output.list(layout.done_prefix))
            except StoreError:  # the flow reports store problems; the bar just waits
                continue
            bar.update(task, completed=done, total=total)

    thread = threading.Thread(target=poll, daemon=True, name="fastsam-progress")
    with bar:
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()
    if not told:  # a run that ended before the first poll
        with contextlib.suppress(StoreError):
            if (plan := runs.load_plan(output, layout)) is not None:
                tell(plan)
