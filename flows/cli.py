"""The `fastsam-label` command line: the parser, and dispatch to one module per command (flows.commands).

    run      label a collection: the Prefect flow on a Ray pool (job file and/or flags)
    reprompt a committed run's masks scored against new prompts from its stored embeddings
    tables   the Delta tables of every committed run: sync, optimize, vacuum
    status   a run's summary, from its manifest (or its progress, while it runs)
    serve    the flow as a Prefect deployment on a cron schedule
    export   a committed run for review or training tools (COCO, CVAT, Label Studio, YOLO)
    report   a committed run's HTML report, written again
    demo     the whole pipeline offline: a loopback S3 endpoint, sample images, the small model
    segment  label local files with fastsam_core directly, one JSON line per mask

Exit codes (schemas.errors): 0 done; 1 the run failed (or some file could not be read); 2 the job,
its inputs or a run's data are wrong; 3 nothing was labelled; 4 storage, the cluster or a server
cannot be reached or refuses access; 5 another flow holds the run; 6 not committed; 7 the
destination holds what would be replaced. Errors are one line naming the object and the fix;
`--debug` shows the traceback. Anything else is a bug: exit 1 and a hint to run with --debug.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

from flows.commands.jobs import add_job_flags
from schemas.errors import exit_code_of
from schemas.params import EverythingParams

#: The module of each command; each has `main(args) -> exit code`.
COMMANDS = {
    name: f"flows.commands.{name}"
    for name in ("run", "reprompt", "tables", "status", "serve", "export", "report", "demo", "segment")
}


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    p = argparse.ArgumentParser(prog="fastsam-label", description="Bulk auto-labeling with FastSAM and CLIP.")
    p.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("segment", help="label local image files, one JSON line per mask")
    s.add_argument("images", nargs="+", type=Path, help="image files (JPEG, PNG, WebP, BMP, TIFF, GIF)")
    s.add_argument("--model", type=Path, help="FastSAM checkpoint (default: the shipped small model)")
    s.add_argument("--sha256", help="pinned sha256 of --model (needed unless it is a known checkpoint)")
    s.add_argument("--allow-unpinned", action="store_true", help="load an unpinned checkpoint (it is a pickle)")
    s.add_argument("--imgsz", type=int, help="model input size, a multiple of 32 (default: the model's own)")
    s.add_argument("--conf", type=float, help=f"minimum box score (default {EverythingParams.conf})")
    s.add_argument("--iou", type=float, help=f"NMS IoU threshold (default {EverythingParams.iou})")
    s.add_argument("--max-det", type=int, help=f"most masks per image (default {EverythingParams.max_det})")
    s.add_argument("--prompt", action="append", default=[], help="a text prompt; repeat for several")
    s.add_argument("--threshold", type=float, default=0.5, help="minimum label probability (default 0.5)")
    s.add_argument(
        "--clip-arch", default="color-words", help="open_clip architecture, or color-words (offline stand-in)"
    )
    s.add_argument("--clip-weights", type=Path, help="open_clip weights file for --clip-arch")
    s.add_argument("--clip-sha256", help="pinned sha256 of --clip-weights")
    s.add_argument("--clip-max-masks", type=int, help="score at most this many masks per image (default: all)")
    s.add_argument("--max-pixels", type=int, default=100_000_000, help="largest image decoded (default 100M)")
    s.add_argument("--out", type=Path, help="output JSON-lines file (default: standard output)")

    r = sub.add_parser("run", help="label a collection (Prefect flow, Ray actors)", description=_RUN_HELP)
    r.add_argument("job", nargs="?", type=Path, help="job file (.yaml or .json); flags override its fields")
    r.add_argument("--run-id", help="reuse a run id to resume that run (default: UTC time + random suffix)")
    r.add_argument(
        "--incremental",
        nargs="?",
        const="labels",
        default="off",
        choices=["labels", "source", "off"],
        help="skip objects earlier runs labelled: 'labels' (the default when given) relabels objects whose "
        "labels came from another model, CLIP, prompts or selection; 'source' skips any object labelled at "
        "the same ETag, whatever labelled it",
    )
    r.add_argument(
        "--allow-unpinned", action="store_true", help="let this run load weights without a pinned sha256 (operator)"
    )
    add_job_flags(r)

    rq = sub.add_parser(
        "reprompt", help="score a committed run's masks against new prompts (no image read)", description=_REPROMPT_HELP
    )
    rq.add_argument("parent", metavar="RUN", help="the committed run (labelled with clip.keep_embeddings: true)")
    rq.add_argument("--output", required=True, help="the output the run is under (s3://bucket/prefix or a folder)")
    rq.add_argument("--prompt", action="append", required=True, help="a text prompt; repeat for several")
    rq.add_argument("--negative", action="append", default=[], help="a negative prompt; repeat for several")
    rq.add_argument("--selection-mode", choices=["instances", "best", "none"], default="instances",
                    help="how scores become labels (default: instances)")  # fmt: skip
    rq.add_argument("--threshold", type=float, default=0.5, help="minimum label probability (default 0.5)")
    rq.add_argument("--run-id", help="reuse a run id to resume that reprompt run")
    rq.add_argument("--clip-weights", help="where the run's CLIP weights are now, if they moved (same sha256)")
    rq.add_argument("--endpoint-url", help="S3-compatible endpoint (default: the run's)")

    tb = sub.add_parser("tables", help="keep the Delta tables under {output}/tables/", description=_TABLES_HELP)
    tb.add_argument("action", choices=["sync", "optimize", "vacuum"])
    tb.add_argument("--output", required=True, help="the job's output (s3://bucket/prefix or a folder)")
    tb.add_argument("--endpoint-url", help="S3-compatible endpoint")
    tb.add_argument("--retention-hours", type=int, default=168, help="vacuum: keep files versions of this age read")
    tb.add_argument("--dry-run", action="store_true", help="vacuum: list what would be deleted")

    st = sub.add_parser("status", help="a run's summary from its manifest")
    st.add_argument("run_id", help="the run id")
    st.add_argument("--output", required=True, help="the job's output (s3://bucket/prefix or a folder)")
    st.add_argument("--endpoint-url", help="S3-compatible endpoint")

    sv = sub.add_parser(
        "serve", help="serve the flow as a Prefect deployment on a cron schedule", description=_SERVE_HELP
    )
    sv.add_argument("job", nargs="?", type=Path, help="job file (.yaml or .json); flags override its fields")
    sv.add_argument("--cron", default="0 3 * * *", help="cron schedule, UTC (default: 03:00 daily)")
    sv.add_argument("--name", default="scheduled", help="deployment name (default: scheduled)")
    sv.add_argument("--full", action="store_true", help="label everything each run (default: incremental)")
    sv.add_argument(
        "--incremental",
        choices=["labels", "source"],
        default="labels",
        help="what an unchanged object's earlier labels must match to be skipped (default: labels; see run)",
    )
    add_job_flags(sv)

    ex = sub.add_parser("export", help="a committed run as COCO, Label Studio or YOLO files", description=_EXPORT_HELP)
    ex.add_argument("run_id", help="the run id")
    ex.add_argument(
        "--output", required=True, help="the job's output the run is under (s3://bucket/prefix or a folder)"
    )
    ex.add_argument("--to", required=True, choices=["coco", "label-studio", "yolo"], help="the format")
    ex.add_argument(
        "--dest", help="folder or s3:// prefix to write to (empty, unless --force); optional with --label-studio-url"
    )
    ex.add_argument("--min-score", type=float, help="keep masks with a detector score at least this")
    ex.add_argument("--min-stability", type=float, help="keep masks with a stability at least this")
    ex.add_argument("--min-area", type=int, help="keep masks of at least this many pixels")
    ex.add_argument("--labelled-only", action="store_true", help="keep only masks with a label")
    ex.add_argument("--prompt", action="append", default=[], help="keep masks labelled with this prompt; repeatable")
    ex.add_argument("--limit", type=int, help="only the first N labelled images (a trial import)")
    ex.add_argument(
        "--force",
        action="store_true",
        help="write into a destination that is not empty: replaces the files an earlier export of this format wrote "
        "there, never others",
    )
    ex.add_argument(
        "--layout", default="default", choices=["default", "cvat"], help="COCO: annotations.json, or CVAT's folders"
    )
    ex.add_argument(
        "--images",
        default="copy",
        choices=["copy", "link", "none"],
        help="YOLO and --layout cvat: copy the images in (default), link them (local folders), or leave them out",
    )
    ex.add_argument("--label-studio-url", help="Label Studio: create --project on this server and import the tasks")
    ex.add_argument("--project", help="Label Studio: the project title (with --label-studio-url)")
    ex.add_argument("--ls-shape", default="brush", choices=["brush", "polygon", "both"], help="Label Studio shapes")
    ex.add_argument("--image-root", help="Label Studio: document root of local files (default: the source folder)")
    ex.add_argument("--image-url-template", help="Label Studio: image URL template with {key}, {uri}, {path}")
    ex.add_argument("--endpoint-url", help="S3-compatible endpoint")

    rp = sub.add_parser("report", help="write a committed run's HTML report again (runs/RUN/report.html)")
    rp.add_argument("run_id", help="the run id")
    rp.add_argument(
        "--output", required=True, help="the job's output the run is under (s3://bucket/prefix or a folder)"
    )
    rp.add_argument("--endpoint-url", help="S3-compatible endpoint (default: the job's)")

    d = sub.add_parser("demo", help="the whole pipeline offline, on sample images")
    d.add_argument("--workdir", type=Path, default=Path("fastsam-label-demo"), help="where the tables are written")
    d.add_argument("--images", type=int, default=24, help="synthetic images to generate (plus two photos)")
    return p


_SERVE_HELP = """Serve label-collection as a Prefect deployment with a cron schedule (needs PREFECT_API_URL
pointing at a Prefect server, or runs against a temporary local one). Scheduled runs are incremental
unless --full: each labels only the objects that are new or changed since the earlier runs, and the
objects whose labels came from another model, CLIP, prompts or selection (--incremental labels)."""

_EXPORT_HELP = """Write a committed run for review or training tools: coco (pycocotools, FiftyOne; --layout cvat
for CVAT's and Datumaro's COCO 1.0 folders), label-studio (tasks with brush and/or polygon
predictions and the labeling config; --label-studio-url and --project import them into a project,
with the token from LABEL_STUDIO_API_KEY), yolo (a dataset ultralytics trains on: data.yaml,
images/, labels/). Errored images and objects whose key cannot be a file path are left out and
counted; the filters choose masks."""

_REPROMPT_HELP = """Score every mask of a committed run against new text prompts from the CLIP embeddings the run
stored (clip.keep_embeddings: true), without reading an image, and commit the result as a new run
under the same output (exports, status and the tables treat it as any run). The CLIP model must be
the one that made the embeddings."""

_TABLES_HELP = """Every committed run is appended to Delta Lake tables under {output}/tables/{images,masks,embeddings}
(what readers use: polars.read_delta, deltalake, Spark, DuckDB, Trino). sync appends committed runs the
tables miss (after a commit that could not reach them); optimize compacts small files (weekly is plenty);
vacuum deletes files that no version younger than --retention-hours reads (default a week: time travel
stops there)."""

_RUN_HELP = """Label every image under the job's source and write the tables under {output}/runs/{run_id}/.
Any job field can also be set from the environment: FASTSAM_LABEL__MODEL__IMGSZ=640."""


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `fastsam-label` console script (exit codes: schemas.errors)."""
    args = build_parser().parse_args(argv)
    try:
        return importlib.import_module(COMMANDS[args.command]).main(args)
    except Exception as e:
        if args.debug:
            raise
        code = exit_code_of(e)
        if code is None:  # not raised on purpose: a bug
            print(
                f"error: unexpected {type(e).__name__}: {e}; this is a bug in fastsam-label: run the command again "
                "with --debug for the traceback, and report it",
                file=sys.stderr,
            )
            return 1
        print(f"error: {e}", file=sys.stderr)
        return code


if __name__ == "__main__":
    sys.exit(main())
