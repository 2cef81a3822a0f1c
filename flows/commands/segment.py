"""`fastsam-label segment FILES`: label local files with the library directly, one JSON line per mask.

Each line is a masks-table row (`schemas.tables.MASKS_SCHEMA`, as `workers.labelling.rows` builds
it for the pipeline) without run_id and image_id, plus `image`: the file's path.
"""

from __future__ import annotations

import argparse
import json
import sys

from schemas.errors import ImageError
from schemas.job import ClipSpec, ModelSpec, SelectionSpec
from schemas.job_file import parse_spec
from schemas.tables import image_id
from workers.labelling import rows
from workers.labelling.decode import decode_image
from workers.labelling.stack import build_stack


def _stack(args: argparse.Namespace):
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
    return build_stack(model, clip, args.prompt, selection=selection)


def main(args: argparse.Namespace) -> int:
    """Write the masks of every file; 1 when some file could not be read (named on stderr), else 0."""
    stack = _stack(args)
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
            result = rows.ImageResult(key=path.name, uri=str(path), image_id=image_id(str(path)), etag=None, size=None)
            result.masks = batch
            for record in rows.mask_records(result, args.prompt):
                out.write(json.dumps({"image": str(path), **record}) + "\n")
            print(f"{path}: {len(batch)} masks", file=sys.stderr)
    finally:
        if out is not sys.stdout:
            out.close()
    return 1 if failures else 0
