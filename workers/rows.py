"""Per-image results to Arrow tables (IMAGES_SCHEMA, MASKS_SCHEMA, PROMPTS_SCHEMA), and shard parts and summaries."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from schemas.manifest import ShardSummary
from schemas.stats import MaskStats
from schemas.tables import IMAGES_SCHEMA, MASKS_SCHEMA, PROMPTS_SCHEMA, ImageStatus

if TYPE_CHECKING:
    from fastsam_core.batch import MaskBatch

STAGES = ("read", "decode", "segment", "score")


@dataclass(frozen=True)
class PromptResult:
    """What one sidecar prompt selected.

    Attributes:
        prompt_id, kind: from the prompt table ("points" or "box").
        mask_ids: the selected masks (points: every mask holding a foreground point and no
            background point; box: the best mask, or none).
        rle: the answer as one mask (points: FastSAM's merged mask; box: the chosen mask), or None.
        iou: box prompts: IoU of the prompt box and the chosen mask's box; None for points.
    """

    prompt_id: str
    kind: str
    mask_ids: list[int]
    rle: dict | None
    iou: float | None = None


@dataclass
class ImageResult:
    """Everything known about one source object after labelling.

    Attributes:
        key: relative to the source prefix; uri: full URI; image_id: stable id of the uri.
        etag, size: of the bytes read (the listing's until the object is read).
        status: an ImageStatus; error: the message (None when ok).
        width, height, frames: of the decoded image (None when not decoded).
        masks: the image's masks; with prompts, also the "clip_cosine", "clip_prob", "label" and
            "label_score" columns (`workers.stack.ModelStack.score`).
        prompts: results of the image's sidecar prompts.
        ms: wall milliseconds per stage (read, decode, segment, score).
    """

    key: str
    uri: str
    image_id: str
    etag: str | None
    size: int | None
    status: ImageStatus = ImageStatus.OK
    error: str | None = None
    width: int | None = None
    height: int | None = None
    frames: int | None = None
    masks: MaskBatch | None = None
    prompts: list[PromptResult] = field(default_factory=list)
    ms: dict[str, float] = field(default_factory=dict)


def images_table(
    results: Sequence[ImageResult], run_id: str, shard_id: int, model_sha256: str, clip_model: str | None
) -> pa.Table:
    """One row per result, in order."""
    cols: dict[str, list] = {name: [] for name in IMAGES_SCHEMA.names}
    for r in results:
        ok = r.status == ImageStatus.OK
        row = {
            "run_id": run_id,
            "shard_id": shard_id,
            "image_id": r.image_id,
            "uri": r.uri,
            "key": r.key,
            "etag": r.etag,
            "size": r.size,
            "status": str(r.status),
            "error": r.error,
            "width": r.width,
            "height": r.height,
            "frames": r.frames,
            "mask_count": len(r.masks) if ok and r.masks is not None else None,
            "model_sha256": model_sha256,
            "clip_model": clip_model,
            **{f"{s}_ms": r.ms.get(s) for s in STAGES},
        }
        for k, v in row.items():
            cols[k].append(v)
    return pa.table(cols, schema=IMAGES_SCHEMA)


def _lists(arr: np.ndarray | None, n: int) -> list:
    """(N, K) float rows as lists; a row with any NaN (not scored) becomes null."""
    if arr is None:
        return [None] * n
    return [None if np.isnan(row).any() else row.tolist() for row in arr]


def mask_columns(r: ImageResult, prompts: Sequence[str]) -> dict[str, list]:
    """The masks-table columns of one image (without run_id and image_id)."""
    b = r.masks
    n = len(b)
    label = b.columns.get("label", np.full(n, -1))
    score = b.columns.get("label_score", np.full(n, np.nan))
    has = label >= 0
    return {
        "mask_id": b.mask_ids.tolist(),
        "rle_size": [list(rle["size"]) for rle in b.rles],
        "rle_counts": [rle["counts"].decode("ascii") for rle in b.rles],
        "bbox": b.bboxes_xywh().astype(np.float32).tolist(),
        "area": b.areas.tolist(),
        "score": b.scores.tolist(),
        "stability": b.stability.tolist(),
        "clip_cosine": _lists(b.columns.get("clip_cosine"), n),
        "clip_prob": _lists(b.columns.get("clip_prob"), n),
        "label": [prompts[i] if h else None for i, h in zip(label.tolist(), has, strict=True)],
        "label_index": [i if h else None for i, h in zip(label.tolist(), has, strict=True)],
        "label_score": [float(s) if h else None for s, h in zip(score.tolist(), has, strict=True)],
    }


def masks_table(results: Sequence[ImageResult], run_id: str, prompts: Sequence[str]) -> pa.Table:
    """One row per mask of every labelled image, images in order, masks in score order."""
    cols: dict[str, list] = {name: [] for name in MASKS_SCHEMA.names}
    for r in results:
        if r.status != ImageStatus.OK or r.masks is None or not len(r.masks):
            continue
        n = len(r.masks)
        cols["run_id"] += [run_id] * n
        cols["image_id"] += [r.image_id] * n
        for k, v in mask_columns(r, prompts).items():
            cols[k] += v
    return pa.table(cols, schema=MASKS_SCHEMA)


def prompts_table(results: Sequence[ImageResult], run_id: str) -> pa.Table:
    """One row per sidecar prompt of every labelled image."""
    cols: dict[str, list] = {name: [] for name in PROMPTS_SCHEMA.names}
    for r in results:
        for p in r.prompts:
            row = {
                "run_id": run_id,
                "image_id": r.image_id,
                "prompt_id": p.prompt_id,
                "kind": p.kind,
                "mask_ids": p.mask_ids,
                "rle_size": list(p.rle["size"]) if p.rle else None,
                "rle_counts": p.rle["counts"].decode("ascii") if p.rle else None,
                "iou": p.iou,
            }
            for k, v in row.items():
                cols[k].append(v)
    return pa.table(cols, schema=PROMPTS_SCHEMA)


#: The struct of one mask inside `nested_table`'s "masks" column.
MASK_STRUCT = pa.struct([f for f in MASKS_SCHEMA if f.name not in ("run_id", "image_id")])


def nested_table(
    results: Sequence[ImageResult], run_id: str, model_sha256: str, clip_model: str | None, prompts: Sequence[str]
) -> pa.Table:
    """The images table plus a "masks" column: each image's masks as a list of MASK_STRUCT."""
    masks = []
    for r in results:
        if r.status != ImageStatus.OK or r.masks is None:
            masks.append(None if r.status != ImageStatus.OK else [])
            continue
        cols = mask_columns(r, prompts)
        masks.append([dict(zip(cols, vals, strict=True)) for vals in zip(*cols.values(), strict=True)])
    table = images_table(results, run_id, 0, model_sha256, clip_model)
    return table.append_column(pa.field("masks", pa.list_(MASK_STRUCT)), pa.array(masks, pa.list_(MASK_STRUCT)))


@dataclass
class ShardPart:
    """The tables of a run of consecutive objects of one shard, as one actor labelled them.

    Attributes:
        images, masks: the images and masks table rows, in object order.
        prompts: the prompts table rows, or None when the job has no prompt table.
        stage_seconds: wall seconds per stage summed over the part's images.
        models: sha256 of the models that labelled it, by role ("fastsam", "clip").
        worker: host:pid of the actor.
    """

    images: pa.Table
    masks: pa.Table
    prompts: pa.Table | None
    stage_seconds: dict[str, float]
    models: dict[str, list[str]]
    worker: str

    def tables(self) -> dict[str, pa.Table]:
        """The part's tables by name (prompts only when the job has a prompt table)."""
        out = {"images": self.images, "masks": self.masks}
        if self.prompts is not None:
            out["prompts"] = self.prompts
        return out


def join_parts(parts: Sequence[ShardPart]) -> ShardPart:
    """One part from consecutive parts, in order."""
    prompts = [p.prompts for p in parts if p.prompts is not None]
    stages: dict[str, float] = {}
    models: dict[str, set[str]] = {}
    for p in parts:
        for k, v in p.stage_seconds.items():
            stages[k] = stages.get(k, 0.0) + v
        for role, hashes in p.models.items():
            models.setdefault(role, set()).update(hashes)
    return ShardPart(
        images=pa.concat_tables([IMAGES_SCHEMA.empty_table(), *(p.images for p in parts)]),
        masks=pa.concat_tables([MASKS_SCHEMA.empty_table(), *(p.masks for p in parts)]),
        prompts=pa.concat_tables([PROMPTS_SCHEMA.empty_table(), *prompts]) if prompts else None,
        stage_seconds=stages,
        models={role: sorted(h) for role, h in models.items()},
        worker=",".join(sorted({p.worker for p in parts if p.worker})),
    )


def shard_summary(run_id: str, shard_id: int, attempt_id: str, part: ShardPart, seconds: float) -> ShardSummary:
    """The summary of a shard attempt, counted from its tables (`seconds`: wall time so far)."""
    status = part.images["status"]
    counts = pc.value_counts(status).to_pylist() if len(status) else []
    by_status = {c["values"]: c["counts"] for c in counts}
    labelled = by_status.pop(ImageStatus.OK.value, 0)
    return ShardSummary(
        run_id=run_id,
        shard_id=shard_id,
        attempt_id=attempt_id,
        objects=part.images.num_rows,
        labelled=labelled,
        masks=part.masks.num_rows,
        prompts=part.prompts.num_rows if part.prompts is not None else 0,
        errors_by_kind=dict(sorted(by_status.items())),
        stage_seconds=dict(part.stage_seconds),
        seconds=seconds,
        models=part.models,
        mask_stats=MaskStats.of_masks(part.masks),
        worker=part.worker,
    )
