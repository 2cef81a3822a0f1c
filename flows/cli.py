"""The `fastsam-label` command line.

    run      label a collection: the Prefect flow on a Ray pool (job file and/or flags)
    status   a run's summary, from its manifest (or its progress, while it runs)
    demo     the whole pipeline offline: a loopback S3 endpoint, sample images, the small model
    segment  label local files with fastsam_core directly, one JSON line per mask

Exit codes: 0 done; 1 the run failed (or some file could not be read); 2 invalid settings;
3 nothing was labelled.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def _segment(args: argparse.Namespace) -> int:
    from fastsam_core import (
        TINY_CHECKPOINT,
        ClipEmbedder,
        ColorWordEmbedder,
        EverythingParams,
        FastSAMModel,
        Segmenter,
        label_instances,
        score_masks,
    )
    from workers.decode import ImageError, decode_image

    model = FastSAMModel.load(args.model or TINY_CHECKPOINT, sha256=args.sha256, allow_unpinned=args.allow_unpinned)
    params = EverythingParams(
        imgsz=args.imgsz or model.default_imgsz, conf=args.conf, iou=args.iou, max_det=args.max_det, retina=True
    )
    segment = Segmenter(model, params)
    embedder = None
    if args.prompt:
        if args.clip_arch == "color-words":
            embedder = ColorWordEmbedder()
        else:
            embedder = ClipEmbedder(args.clip_arch, args.clip_weights, sha256=args.clip_sha256)
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
            batch = segment([img])[0]
            labels = None
            if embedder is not None:
                batch = score_masks(img, batch, embedder, args.prompt)
                labels = label_instances(batch, len(args.prompt), args.threshold)
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
                if labels is not None:
                    lab = int(labels.label[i])
                    row["clip_scores"] = [None if np.isnan(v) else float(v) for v in batch.columns["clip_cosine"][i]]
                    row["label"] = args.prompt[lab] if lab >= 0 else None
                    row["label_score"] = None if lab < 0 else float(labels.score[i])
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
    if summary["state"] != "done":
        return 1
    if c["labelled"] == 0 and not (c["objects"] == 0 and c["skipped_unchanged"] > 0):
        return 3  # nothing labelled (an incremental run with nothing new is not an error)
    return 0


def _run(args: argparse.Namespace) -> int:
    from schemas.job import load_job

    job = load_job(args.job, **_job_fields(args))
    return run_job(job, args.run_id, args.incremental)[0]


def run_job(job, run_id: str | None, incremental: bool) -> tuple[int, dict | None]:
    """Run the flow with a progress bar and print the summary; the exit code and the summary."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from flows.label import PROGRESS, RunFailedError, label_collection

    progress = Progress(
        TextColumn("labelling shards"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), transient=True
    )
    bar = progress.add_task("shards", total=None)

    def update(done: int, total: int) -> None:
        progress.update(bar, completed=done, total=total)

    PROGRESS.append(update)
    try:
        with progress:
            summary = label_collection(job=job.model_dump(mode="json"), run_id=run_id, incremental=incremental)
    except RunFailedError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1, None
    finally:
        PROGRESS.remove(update)
    print(json.dumps(summary, indent=2))
    return _exit_code(summary), summary


def _status(args: argparse.Namespace) -> int:
    from schemas.job import StorageSpec, check_run_id
    from workers import runs
    from workers.store import open_store

    output = open_store(args.output, StorageSpec(endpoint_url=args.endpoint_url))
    run_id = check_run_id(args.run_id)
    manifest = runs.load_manifest(output, run_id)
    if manifest is not None:
        print(
            json.dumps(
                {
                    "run_id": run_id,
                    "state": "committed",
                    "counts": manifest.counts,
                    "errors_by_kind": manifest.errors_by_kind,
                    "stage_seconds": manifest.stage_seconds,
                    "started_at": manifest.started_at.isoformat(),
                    "finished_at": manifest.finished_at.isoformat(),
                    "models": manifest.models,
                    "code_version": manifest.code_version,
                },
                indent=2,
            )
        )
        return 0
    plan = runs.load_plan(output, run_id)
    if plan is None:
        print(f"error: no run {run_id} under {output.uri}: check the run id and --output", file=sys.stderr)
        return 2
    done = runs.done_shards(output, run_id)
    counts, errors, _ = runs.totals(list(done.values()))
    state = {"run_id": run_id, "state": "incomplete", "shards": {"planned": plan.shards, "done": len(done)}}
    print(json.dumps({**state, "counts": counts, "errors_by_kind": errors}, indent=2))
    return 1


def _serve(args: argparse.Namespace) -> int:
    from flows.label import label_collection
    from schemas.job import load_job

    job = load_job(args.job, **_job_fields(args))  # validated now: a bad job fails before serving
    print(f"serving deployment label-collection/{args.name} on cron {args.cron!r} (Ctrl-C to stop)")
    label_collection.serve(
        name=args.name,
        cron=args.cron,
        parameters={"job": job.model_dump(mode="json"), "incremental": not args.full},
        limit=1,  # one run at a time: overlapping incremental runs would label the same new objects
        pause_on_shutdown=False,
    )
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
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("segment", help="label local image files, one JSON line per mask")
    s.add_argument("images", nargs="+", type=Path, help="image files (JPEG, PNG, WebP, BMP, TIFF, GIF)")
    s.add_argument("--model", type=Path, help="FastSAM checkpoint (default: the shipped small model)")
    s.add_argument("--sha256", help="pinned sha256 of --model (needed unless it is a known checkpoint)")
    s.add_argument("--allow-unpinned", action="store_true", help="load an unpinned checkpoint (it is a pickle)")
    s.add_argument("--imgsz", type=int, help="model input size, a multiple of 32 (default: the model's own)")
    s.add_argument("--conf", type=float, default=0.4, help="minimum box score (default 0.4)")
    s.add_argument("--iou", type=float, default=0.9, help="NMS IoU threshold (default 0.9)")
    s.add_argument("--max-det", type=int, default=300, help="most masks per image (default 300)")
    s.add_argument("--prompt", action="append", default=[], help="a text prompt; repeat for several")
    s.add_argument("--threshold", type=float, default=0.5, help="minimum label probability (default 0.5)")
    s.add_argument(
        "--clip-arch", default="color-words", help="open_clip architecture, or color-words (offline stand-in)"
    )
    s.add_argument("--clip-weights", type=Path, help="open_clip weights file for --clip-arch")
    s.add_argument("--clip-sha256", help="pinned sha256 of --clip-weights")
    s.add_argument("--max-pixels", type=int, default=100_000_000, help="largest image decoded (default 100M)")
    s.add_argument("--out", type=Path, help="output JSON-lines file (default: standard output)")
    s.set_defaults(func=_segment)

    r = sub.add_parser("run", help="label a collection (Prefect flow, Ray actors)", description=_RUN_HELP)
    r.add_argument("job", nargs="?", type=Path, help="job file (.yaml or .json); flags override its fields")
    r.add_argument("--run-id", help="reuse a run id to resume that run (default: the UTC time)")
    r.add_argument("--incremental", action="store_true", help="only objects new or changed since earlier runs")
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

    d = sub.add_parser("demo", help="the whole pipeline offline, on sample images")
    d.add_argument("--workdir", type=Path, default=Path("fastsam-label-demo"), help="where the tables are written")
    d.add_argument("--images", type=int, default=24, help="synthetic images to generate (plus two photos)")
    d.set_defaults(func=_demo)
    return p


_SERVE_HELP = """Serve label-collection as a Prefect deployment with a cron schedule (needs PREFECT_API_URL
pointing at a Prefect server, or runs against a temporary local one). Scheduled runs are incremental
unless --full: each labels only the objects that are new or changed since the earlier runs."""

_RUN_HELP = """Label every image under the job's source and write the tables under {output}/runs/{run_id}/.
Any job field can also be set from the environment: FASTSAM_LABEL__MODEL__IMGSZ=640."""


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `fastsam-label` console script."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ValueError as e:  # configuration errors (JobError is one): name the problem, no traceback
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
