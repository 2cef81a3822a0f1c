"""The `fastsam-label` commands, one module each; `flows.cli` holds the parser and dispatches to `main(args)`.

run      label a collection: the Prefect flow on a Ray pool (job file and/or flags)
reprompt a committed run's masks scored against new prompts from its stored embeddings
tables   the Delta tables of every committed run: sync, optimize, vacuum
status   a run's summary, from its manifest (or its progress, while it runs)
serve    the flow as a Prefect deployment on a cron schedule
export   a committed run for review or training tools
report   a committed run's HTML report, written again
demo     the whole pipeline offline: a loopback S3 endpoint, sample images, the small model
segment  label local files with fastsam_core directly, one JSON line per mask
"""
