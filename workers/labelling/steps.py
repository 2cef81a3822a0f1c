"""The per-image steps of labelling, shared by the shard runner and the Ray Data callable.

An image moves through them as a `workers.labelling.rows.ImageResult`: decoded (`decode_into`), then
segmented and scored with the images of its batch (`label_batch`), then its sidecar prompts run
(`sidecar_results`). A step that fails for one image records the failure on that image's result
and the others go on; only `FATAL` errors (the worker is in trouble) propagate.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from fastsam_core import NO_MASK, MaskBatch, merge_by_points, select_by_boxes, select_by_points
from fastsam_core import rle as rle_utils
from fastsam_core.prompts import box_iou
from schemas.errors import ImageError
from schemas.tables import ImageStatus
from workers.labelling import rows
from workers.labelling.decode import decode_image
from workers.labelling.readahead import PixelHold
from workers.labelling.sidecar import ImagePrompt
from workers.labelling.stack import ModelStack
from workers.storage import display_key

log = logging.getLogger(__name__)

#: Errors that mean the worker, not the image, is in trouble: the shard fails and is retried.
FATAL = (MemoryError, torch.cuda.OutOfMemoryError)

#: One decoded image waiting for the model: its result so far, its pixels, its read-ahead hold.
Pending = tuple[rows.ImageResult, np.ndarray, PixelHold | None]


def ms_since(t0: float) -> float:
    """Wall milliseconds since `t0` (a `time.perf_counter()` reading)."""
    return (time.perf_counter() - t0) * 1000


def fail(res: rows.ImageResult, kind: ImageStatus, message: str) -> rows.ImageResult:
    """Record a failure on `res` (status and one-line message) and return it."""
    res.status, res.error = kind, message
    log.info("%s: %s", kind, message)
    return res


def decode_into(
    res: rows.ImageResult, data: bytes, max_pixels: int, hold: PixelHold | None = None
) -> np.ndarray | None:
    """Decode `data` into (H, W, 3) uint8 RGB, filling `res`'s size fields; None (failure recorded) if it cannot."""
    t0 = time.perf_counter()
    try:
        img = decode_image(data, display_key(res.uri), max_pixels, hold)
    except ImageError as e:
        if hold is not None:
            hold.release()
        fail(res, ImageStatus(e.kind), str(e))
        return None
    res.ms["decode"] = ms_since(t0)
    res.height, res.width = img.rgb.shape[:2]
    res.frames = img.frames
    return img.rgb


def label_batch(
    stack: ModelStack, pending: list[Pending], image_prompts: Mapping[str, Sequence[ImagePrompt]] | None = None
) -> None:
    """Segment and score a batch of decoded images into their results, then release their holds.

    Sets `masks` (and `prompts` for keys in `image_prompts`) and the "segment"/"score" stage times
    of each result; an image that breaks the batch is found by labelling the batch's images one by
    one, and gets a label_error row.
    """
    try:
        _segment(stack, pending, image_prompts or {})
    finally:
        for _, _, hold in pending:
            if hold is not None:
                hold.release()


def _segment(stack: ModelStack, pending: list[Pending], image_prompts: Mapping) -> None:
    t0 = time.perf_counter()
    try:
        batches = stack.segment([rgb for _, rgb, _ in pending])
    except FATAL:
        raise
    except Exception as e:  # find the image that breaks the batch, label the rest
        if len(pending) > 1:
            for p in pending:
                _segment(stack, [p], image_prompts)
            return
        fail(pending[0][0], ImageStatus.LABEL_ERROR, _failed(pending[0][0], "segmentation", e))
        return
    for res, _, _ in pending:
        res.ms["segment"] = ms_since(t0) / len(pending)
    _score(stack, pending, batches, image_prompts)


def _score(stack: ModelStack, pending: list[Pending], batches: list[MaskBatch], image_prompts: Mapping) -> None:
    t0 = time.perf_counter()
    try:
        scored = stack.score([rgb for _, rgb, _ in pending], batches)
    except FATAL:
        raise
    except Exception as e:  # one bad image does not stop the shard
        if len(pending) > 1:
            for p, b in zip(pending, batches, strict=True):
                _score(stack, [p], [b], image_prompts)
            return
        fail(pending[0][0], ImageStatus.LABEL_ERROR, _failed(pending[0][0], "scoring", e))
        return
    score_ms = ms_since(t0) / len(pending)
    for (res, _, _), mb in zip(pending, scored, strict=True):
        t1 = time.perf_counter()
        try:
            res.prompts = sidecar_results(mb, image_prompts.get(res.key, ()))
        except FATAL:
            raise
        except Exception as e:
            fail(res, ImageStatus.LABEL_ERROR, _failed(res, "prompt selection", e))
            continue
        res.masks = mb
        res.ms["score"] = score_ms + ms_since(t1)


def sidecar_results(mb: MaskBatch, prompts: Sequence[ImagePrompt]) -> list[rows.PromptResult]:
    """What each of an image's sidecar point and box prompts selects among its masks."""
    out = []
    for p in prompts:
        if p.kind == "points":
            chosen = select_by_points(mb, p.points_xy, p.point_labels)
            merged = merge_by_points(mb, p.points_xy, p.point_labels)
            rle = merged if rle_utils.area(merged) > 0 else None
            out.append(rows.PromptResult(p.prompt_id, "points", chosen.mask_ids.tolist(), rle))
            continue
        mid = int(select_by_boxes(mb, p.box_xyxy[None])[0])
        if mid == NO_MASK:
            out.append(rows.PromptResult(p.prompt_id, "box", [], None, None))
            continue
        i = int(np.flatnonzero(mb.mask_ids == mid)[0])
        iou = float(box_iou(mb[i], p.box_xyxy[None])[0, 0])  # the IoU that chose it (box clipped)
        out.append(rows.PromptResult(p.prompt_id, "box", [mid], mb.rles[i], iou))
    return out


def _failed(res: rows.ImageResult, step: str, e: BaseException) -> str:
    return f"{display_key(res.uri)}: {step} failed: {type(e).__name__}: {e}"
