"""`fastsam-label reprompt RUN --output URI --prompt P ...`: a committed run re-scored against new prompts."""

from __future__ import annotations

import argparse
import json

from flows.prefect_server import offline, quiet_logs, temporary_server
from schemas.job import StorageSpec
from workers.storage import open_store


def main(args: argparse.Namespace) -> int:
    """Run the reprompt flow (flows.reprompt) on a temporary Prefect server; print the summary; 0 when committed."""
    offline()
    from flows.reprompt import reprompt_run
    from workers.labelling.reprompt import embeddings_run
    from workers.runs import new_run_id

    if not args.debug:
        quiet_logs()
    # Fail in seconds, before Prefect starts: the run must be committed and have stored embeddings.
    embeddings_run(open_store(args.output, StorageSpec(endpoint_url=args.endpoint_url)), args.parent)
    run_id = args.run_id or new_run_id()
    print(f"run {run_id}: re-prompting run {args.parent} with {args.prompt} (resume with --run-id {run_id})")
    with temporary_server():
        summary = reprompt_run(
            output=args.output,
            parent=args.parent,
            prompts=list(args.prompt),
            negatives=list(args.negative),
            selection={"mode": args.selection_mode, "threshold": args.threshold},
            run_id=run_id,
            clip_weights=args.clip_weights,
            endpoint_url=args.endpoint_url,
        )
    print(json.dumps(summary, indent=2))
    return 0
