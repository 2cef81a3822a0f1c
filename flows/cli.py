"""The `fastsam-label` command line.

    run      label a collection: the Prefect flow on a Ray pool (job file and/or flags)
    status   a run's summary, from its manifest (or its progress, while it runs)
    demo     the whole pipeline offline: a loopback S3 endpoint, sample images, the small model
    segment  label local files with fastsam_core directly, one JSON line per mask

Exit codes (schemas.errors): 0 done; 1 the run failed (or some file could not be read); 2 the job or
its inputs are wrong; 3 nothing was labelled; 4 storage or the cluster cannot be reached or refuses
access; 5 another flow holds the run. Errors are one line naming the object and the fix;
`--debug` shows the traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from schemas.params import EverythingParams


def _segment(args: argparse.Namespace) -> int:
    from schemas.errors import ImageError
    from schemas.job import ClipSpec, ModelSpec, SelectionSpec, parse_spec
    from workers.decode import decode_image
    from workers.stack import build_stack

    given = {"imgsz": args.imgsz, "conf": args.conf, "iou": args.iou, "max_det": args.max_det}
    model = parse_spec(
        ModelSpec,
        {
            "checkpoint": str(args.model) if args.model else None,
            "sha256": args.sha256,
            "allow_unpinned": args.allow_unpinned,
            **{k: v for k, v in given.items() if v is not None},
        },
        "segment options",
    )
    clip = parse_spec(
        ClipSpec,
        {
            "arch": args.clip_arch,
            "weights": str(args.clip_weights) if args.clip_weights else None,
            "sha256": args.clip_sha256,
            **({"max_masks": args.clip_max_masks} if args.clip_max_masks else {}),
        },
        "segment options",
    )
    selection = parse_spec(SelectionSpec, {"threshold": args.threshold}, "segment options")
    stack = build_stack(model, clip, args.prompt, selection=selection)
    out = open(args.out, "w") if args.out else sys.stdout  # noqa: SIM115 - closed below unless stdout
    failures = 0
    try:
        for path in args.images:
            try:
                img = decode_image(path.read_bytes(), str(path), args.max_pixels).rgb
            except (OSError, ImageError) as e:
                failures += 1
                print(f"error: {getattr(e, 'kind', 'read_error')}: {e}", file=sys.stderr)
                continue
            with stack.threads_set():
                batch = stack.label([img])[0]
            boxes = batch.bboxes_xywh()
            for i in range(len(batch)):
                row = {
                    "image": str(path),
                    "mask_id": int(batch.mask_ids[i]),
                    "segmentation": {"size": batch.rles[i]["size"], "counts": batch.rles[i]["counts"].decode()},
                    "bbox": [float(v) for v in boxes[i]],
                    "area": int(batch.areas[i]),
                    "score": float(batch.scores[i]),
                    "stability": float(batch.stability[i]),
                }
                if args.prompt:
                    lab = int(batch.columns["label"][i])
                    row["clip_scores"] = [None if np.isnan(v) else float(v) for v in batch.columns["clip_cosine"][i]]
                    row["label"] = args.prompt[lab] if lab >= 0 else None
                    row["label_score"] = None if lab < 0 else float(batch.columns["label_score"][i])
                out.write(json.dumps(row) + "\n")
            print(f"{path}: {len(batch)} masks", file=sys.stderr)
    finally:
        if out is not sys.stdout:
            out.close()
    return 1 if failures else 0


def _job_fields(args: argparse.Namespace) -> dict:
    """Job fields set by command-line flags (None = not given)."""
    fields: dict = {}
    if args.source:
        fields["source"] = {"uri": args.source}
    if args.output:
        fields["output"] = args.output
    if args.prompt:
        fields["prompts"] = args.prompt
    if args.negative:
        fields["negative_prompts"] = args.negative
    compute = {
        k: v
        for k, v in {
            "num_actors": args.num_actors,
            "shard_size": args.shard_size,
            "ray_address": args.ray_address,
        }.items()
        if v is not None
    }
    if compute:
        fields["compute"] = compute
    if args.endpoint_url:
        fields["storage"] = {"endpoint_url": args.endpoint_url}
    return fields


def _exit_code(summary: dict) -> int:
    c = summary["counts"]
    if summary["state"] != "committed":
        return 1
    if c["labelled"] == 0 and c["objects"] > 0:
        return 3  # nothing labelled (an incremental run with nothing new is not an error)
    return 0


def _run(args: argparse.Namespace) -> int:
    from schemas.job import load_job

    if args.allow_unpinned:  # this shell's user is the operator of this run
        from schemas.operator import ENV_ALLOW_UNPINNED

        os.environ[ENV_ALLOW_UNPINNED] = "1"
    job = load_job(args.job, **_job_fields(args))
    return run_job(job, args.run_id, args.incremental, debug=args.debug)[0]


def run_job(job, run_id: str | None, incremental: bool, debug: bool = False) -> tuple[int, dict | None]:
    """Check the job, run the flow with a progress bar, print the summary; the exit code and the summary.

    The preflight runs here first, so a wrong job, store or weights file fails in seconds, before
    Prefect and Ray start.
    """
    _offline_prefect()
    from flows.label import checked_job, label_collection
    from schemas.errors import RunFailedError
    from schemas.fingerprint import fingerprint
    from schemas.layout import RunLayout
    from workers import runs
    from workers.preflight import preflight
    from workers.store import open_store

    if not debug:
        _quiet_prefect()
    layout = RunLayout(run_id or runs.new_run_id())
    checked = preflight(checked_job(job.model_dump(mode="json")), layout)
    spec = checked.job
    output = open_store(spec.output, spec.storage)
    planned = runs.load_plan(output, layout)
    if planned is not None:  # a resume: refuse another job now, not after Prefect and Ray have started
        runs.check_same_job(planned, fingerprint(spec, checked.hashes))
    print(f"run {layout.run_id}: labelling {job.source.uri} -> {spec.output} (resume with --run-id {layout.run_id})")
    from flows.prefect_server import temporary_server
    from workers import reaper
    from workers.pool import started_ahead

    if threading.current_thread() is threading.main_thread():
        # What Ray's driver would do, had it started on this thread: finally blocks and clean-up run.
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        ahead = contextlib.nullcontext() if runs.is_committed(output, layout) else started_ahead(spec)
        # The actors load their models while Prefect's server starts; the flow starts when it answers.
        # Whatever those start is stopped when this process ends, even by SIGKILL (workers.reaper).
        with reaper.watch(), ahead, temporary_server(), _progress(output, layout):
            summary = label_collection(job=job.model_dump(mode="json"), run_id=layout.run_id, incremental=incremental)
    except RunFailedError as e:
        print(json.dumps(e.summary.model_dump(mode="json"), indent=2))
        print(f"error: {e}", file=sys.stderr)
        return 1, None
    print(json.dumps(summary, indent=2))
    return _exit_code(summary), summary


@contextlib.contextmanager
def _progress(output, layout) -> Iterator[None]:
    """A progress bar of done shards, read from the output store every second while the block runs."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from schemas.errors import StoreError
    from workers.runs import load_plan

    bar = Progress(
        TextColumn("labelling shards"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), transient=True
    )
    task = bar.add_task("shards", total=None)
    stop = threading.Event()

    def poll() -> None:
        total = None
        while not stop.wait(1.0):
            try:
                if total is None and (plan := load_plan(output, layout)) is not None:
                    total = plan.shards
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


def _status(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    from schemas.job import StorageSpec
    from schemas.layout import RunLayout
    from workers import runs
    from workers.committed import CommittedRun
    from workers.lease import RunLease
    from workers.store import open_store

    output = open_store(args.output, StorageSpec(endpoint_url=args.endpoint_url))
    layout = RunLayout(args.run_id)
    if runs.is_committed(output, layout):
        run = CommittedRun(output, layout.run_id)  # the manifest agrees with the plan,
        run.verify()  # and every file is the one it names (else one line, exit 2)
        print(json.dumps(run.manifest.summary.model_dump(mode="json"), indent=2))
        return 0
    plan = runs.load_plan(output, layout)
    if plan is None:
        print(f"error: no run {layout.run_id} under {output.uri}: check the run id and --output", file=sys.stderr)
        return 2
    holder = RunLease(output, layout).holder()
    state = "running" if holder is not None and not holder.free(datetime.now(UTC)) else "incomplete"
    summary = runs.summary_of(output, layout, plan, runs.done_markers(output, layout), state)
    print(json.dumps(summary.model_dump(mode="json"), indent=2))
    return 1


def _serve(args: argparse.Namespace) -> int:
    _offline_prefect()
    from flows.label import checked_job, label_collection
    from schemas.job import load_job

    job = load_job(args.job, **_job_fields(args))  # validated now: a bad job fails before serving
    checked_job(job.model_dump(mode="json"))  # and held to the operator's policy
    print(f"serving deployment label-collection/{args.name} on cron {args.cron!r} (Ctrl-C to stop)")
    label_collection.serve(
        name=args.name,
        cron=args.cron,
        parameters={"job": job.model_dump(mode="json"), "incremental": not args.full},
        limit=1,  # one run at a time: overlapping incremental runs would label the same new objects
        pause_on_shutdown=False,
    )
    return 0


def _export(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from schemas.job import StorageSpec
    from workers.committed import MaskFilter
    from workers.export import ExportOptions, export_run

    keep = MaskFilter(
        min_score=args.min_score,
        min_stability=args.min_stability,
        min_area=args.min_area,
        labelled_only=args.labelled_only,
        prompts=tuple(args.prompt),
        limit=args.limit,
    )
    options = ExportOptions(
        args.to,
        args.dest,
        keep,
        args.force,
        args.ls_shape,
        args.image_root,
        args.image_url_template,
        args.layout,
        args.images,
        args.label_studio_url,
        args.project,
    )
    summary = export_run(args.output, args.run_id, options, StorageSpec(endpoint_url=args.endpoint_url))
    print(json.dumps(asdict(summary), indent=2))
    left = ", ".join(f"{n} {why}" for why, n in summary.left_out.items())
    where = " and ".join(
        w
        for w in (
            summary.dest,
            summary.label_studio and f"Label Studio project {summary.label_studio['url']}",
        )
        if w
    )
    print(
        f"exported run {args.run_id} as {args.to}: {summary.images} images, {summary.annotations} masks"
        + (f" (left out: {left})" if left else "")
        + f" -> {where}",
        file=sys.stderr,
    )
    if summary.refused:
        first = summary.refused[0]
        print(
            f"warning: objects left out for their key or format (counted in left_out, named in refused), first "
            f"{first['key']}: {first['why']}",
            file=sys.stderr,
        )
    return 0


def _report(args: argparse.Namespace) -> int:
    from schemas.job import StorageSpec
    from workers import report
    from workers.committed import CommittedRun
    from workers.store import open_store

    storage = StorageSpec(endpoint_url=args.endpoint_url)
    run = CommittedRun(open_store(args.output, storage), args.run_id)
    images = [run.table("images", s) for s in run.manifest.shards]
    page = report.build(run.output, run.source(storage), run.layout, run.manifest, images)
    run.output.put(run.layout.report, page.encode())
    print(run.output.uri_of(run.layout.report))
    return 0


def _demo(args: argparse.Namespace) -> int:
    from flows.demo import run_demo

    return run_demo(args.workdir, args.images)


def _add_job_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--source", help="s3://bucket/prefix or a folder of images (source.uri)")
    p.add_argument("--output", help="s3://bucket/prefix or a folder for the tables (output)")
    p.add_argument("--prompt", action="append", default=[], help="a text prompt; repeat for several")
    p.add_argument("--negative", action="append", default=[], help="a negative prompt; repeat for several")
    p.add_argument("--num-actors", type=int, help="Labeler actors (compute.num_actors)")
    p.add_argument("--shard-size", type=int, help="objects per shard (compute.shard_size)")
    p.add_argument("--ray-address", help="an existing Ray cluster (compute.ray_address); default: a local one")
    p.add_argument("--endpoint-url", help="S3-compatible endpoint (storage.endpoint_url)")


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
    s.set_defaults(func=_segment)

    r = sub.add_parser("run", help="label a collection (Prefect flow, Ray actors)", description=_RUN_HELP)
    r.add_argument("job", nargs="?", type=Path, help="job file (.yaml or .json); flags override its fields")
    r.add_argument("--run-id", help="reuse a run id to resume that run (default: UTC time + random suffix)")
    r.add_argument("--incremental", action="store_true", help="only objects new or changed since earlier runs")
    r.add_argument(
        "--allow-unpinned", action="store_true", help="let this run load weights without a pinned sha256 (operator)"
    )
    _add_job_flags(r)
    r.set_defaults(func=_run)

    st = sub.add_parser("status", help="a run's summary from its manifest")
    st.add_argument("run_id", help="the run id")
    st.add_argument("--output", required=True, help="the job's output (s3://bucket/prefix or a folder)")
    st.add_argument("--endpoint-url", help="S3-compatible endpoint")
    st.set_defaults(func=_status)

    sv = sub.add_parser(
        "serve", help="serve the flow as a Prefect deployment on a cron schedule", description=_SERVE_HELP
    )
    sv.add_argument("job", nargs="?", type=Path, help="job file (.yaml or .json); flags override its fields")
    sv.add_argument("--cron", default="0 3 * * *", help="cron schedule, UTC (default: 03:00 daily)")
    sv.add_argument("--name", default="scheduled", help="deployment name (default: scheduled)")
    sv.add_argument("--full", action="store_true", help="label everything each run (default: only new or changed)")
    _add_job_flags(sv)
    sv.set_defaults(func=_serve)

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
    ex.set_defaults(func=_export)

    rp = sub.add_parser("report", help="write a committed run's HTML report again (runs/RUN/report.html)")
    rp.add_argument("run_id", help="the run id")
    rp.add_argument(
        "--output", required=True, help="the job's output the run is under (s3://bucket/prefix or a folder)"
    )
    rp.add_argument("--endpoint-url", help="S3-compatible endpoint (default: the job's)")
    rp.set_defaults(func=_report)

    d = sub.add_parser("demo", help="the whole pipeline offline, on sample images")
    d.add_argument("--workdir", type=Path, default=Path("fastsam-label-demo"), help="where the tables are written")
    d.add_argument("--images", type=int, default=24, help="synthetic images to generate (plus two photos)")
    d.set_defaults(func=_demo)
    return p


_SERVE_HELP = """Serve label-collection as a Prefect deployment with a cron schedule (needs PREFECT_API_URL
pointing at a Prefect server, or runs against a temporary local one). Scheduled runs are incremental
unless --full: each labels only the objects that are new or changed since the earlier runs."""

_EXPORT_HELP = """Write a committed run for review or training tools: coco (pycocotools, FiftyOne; --layout cvat
for CVAT's and Datumaro's COCO 1.0 folders), label-studio (tasks with brush and/or polygon
predictions and the labeling config; --label-studio-url and --project import them into a project,
with the token from LABEL_STUDIO_API_KEY), yolo (a dataset ultralytics trains on: data.yaml,
images/, labels/). Errored images and objects whose key cannot be a file path are left out and
counted; the filters choose masks."""

_RUN_HELP = """Label every image under the job's source and write the tables under {output}/runs/{run_id}/.
Any job field can also be set from the environment: FASTSAM_LABEL__MODEL__IMGSZ=640."""


class _OneLineErrors(logging.Filter):
    """Drops Prefect's error records of failed flow and task runs.

    Their exception, with its traceback, reaches the CLI, which says it once, in one line (`--debug`
    keeps them).
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return not (
            record.levelno >= logging.ERROR and record.name.startswith(("prefect.flow_runs", "prefect.task_runs"))
        )


def _offline_prefect() -> None:
    """Settings for the temporary Prefect server a CLI run starts: no telemetry to the internet."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


def _quiet_prefect() -> None:
    from prefect.logging.configuration import setup_logging
    from prefect.logging.handlers import PrefectConsoleHandler

    setup_logging()  # Prefect's handlers exist from here on (it would set them up at the first run)
    for handler in logging.getLogger().handlers:  # its console handler is the root logger's
        if isinstance(handler, PrefectConsoleHandler) and not any(
            isinstance(f, _OneLineErrors) for f in handler.filters
        ):
            handler.addFilter(_OneLineErrors())


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `fastsam-label` console script (exit codes: schemas.errors)."""
    from schemas.errors import exit_code_of

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
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
