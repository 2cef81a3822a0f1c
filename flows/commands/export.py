"""`fastsam-label export RUN --output URI --to FORMAT ...`: a committed run for review or training tools."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict

from schemas.job import StorageSpec
from workers.outputs.export import ExportOptions, export_run
from workers.runs.committed import MaskFilter


def options_of(args: argparse.Namespace) -> ExportOptions:
    """The export's options from its flags."""
    keep = MaskFilter(
        min_score=args.min_score,
        min_stability=args.min_stability,
        min_area=args.min_area,
        labelled_only=args.labelled_only,
        prompts=tuple(args.prompt),
        limit=args.limit,
    )
    return ExportOptions(
        to=args.to,
        dest=args.dest,
        masks=keep,
        force=args.force,
        ls_shape=args.ls_shape,
        image_root=args.image_root,
        image_url_template=args.image_url_template,
        layout=args.layout,
        images=args.images,
        label_studio_url=args.label_studio_url,
        project=args.project,
    )


def main(args: argparse.Namespace) -> int:
    """Export; print the summary (JSON) and one line saying what went where."""
    summary = export_run(args.output, args.run_id, options_of(args), StorageSpec(endpoint_url=args.endpoint_url))
    print(json.dumps(asdict(summary), indent=2))
    left = ", ".join(f"{n} {why}" for why, n in summary.left_out.items())
    studio = summary.label_studio and f"Label Studio project {summary.label_studio['url']}"
    where = " and ".join(w for w in (summary.dest, studio) if w)
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
