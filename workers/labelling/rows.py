"""Per-image results to Arrow tables (IMAGES_SCHEMA, MASKS_SCHEMA, PROMPTS_SCHEMA), and shard parts and summaries."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from schemas.job import Job
from schemas.tables import IMAGES_SCHEMA, MASKS_SCHEMA, PROMPTS_SCHEMA, ImageStatus, embeddings_schema, image_id
from workers.runs.parts import ShardPart
from workers.storage import ObjectInfo, display_key

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
            "label_score" columns (`workers.labelling.stack.ModelStack.score`).
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


def mask_records(r: ImageResult, prompts: Sequence[str]) -> list[dict]:
    """The image's masks as masks-table rows (dicts, without run_id and image_id), in score order."""
    cols = mask_columns(r, prompts)
    return [dict(zip(cols, values, strict=True)) for values in zip(*cols.values(), strict=True)]


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


def embeddings_table(results: Sequence[ImageResult], run_id: str, schema: pa.Schema) -> pa.Table:
    """One row per scored mask of every labelled image (masks with a "clip_embedding" row), in masks-table order.

    `schema` is `schemas.tables.embeddings_schema(dim, dtype)`: the vectors are stored in its dtype.
    """
    ids, mask_ids, vectors = [], [], []
    for r in results:
        if r.status != ImageStatus.OK or r.masks is None or "clip_embedding" not in r.masks.columns:
            continue
        emb = r.masks.columns["clip_embedding"]
        keep = ~np.isnan(emb).any(1)
        ids += [r.image_id] * int(keep.sum())
        mask_ids += r.masks.mask_ids[keep].tolist()
        vectors.append(emb[keep])
    value_type = schema.field("embedding").type
    dim = value_type.list_size
    flat = np.concatenate(vectors).reshape(-1) if vectors else np.zeros(0, np.float32)
    values = pa.array(flat.astype(value_type.value_type.to_pandas_dtype()), value_type.value_type)
    return pa.table(
        {"run_id": [run_id] * len(ids), "image_id": ids, "mask_id": pa.array(mask_ids, pa.int32()),
         "embedding": pa.FixedSizeListArray.from_arrays(values, dim)},
        schema=schema,
    )  # fmt: skip


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


def worker_lost_part(
    obj: ObjectInfo, uri: str, run_id: str, shard_id: int, job: Job, model_sha256: str, clip_model: str | None
) -> ShardPart:
    """The part that records an object on which the Labeler actor died twice: a `worker_lost` row, no masks."""
    res = ImageResult(key=obj.key, uri=uri, image_id=image_id(uri), etag=obj.etag, size=obj.size)
    res.status = ImageStatus.WORKER_LOST
    res.error = (
        f"{display_key(uri)}: the Labeler actor died twice while labelling it (out of memory or a crash in native "
        "code); check the file, or give the actors more memory (limits.max_pixels, compute.read_ahead_pixels)"
    )
    return ShardPart(
        images=images_table([res], run_id, shard_id, model_sha256, clip_model),
        masks=masks_table([], run_id, job.all_prompts),
        prompts=prompts_table([], run_id) if job.prompt_table else None,
        stage_seconds={},
        models={},
        worker="",
        embeddings=embeddings_table([], run_id, embeddings_schema_of(job)) if job.clip.keep_embeddings else None,
    )


def embeddings_schema_of(job: Job) -> pa.Schema:
    """The embeddings table schema of a job that keeps embeddings (its CLIP's dimension, its dtype)."""
    from workers.labelling.stack import embedding_dim

    return embeddings_schema(embedding_dim(job.clip), job.clip.embedding_dtype)
