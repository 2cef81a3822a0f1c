"""Prompt-guided selection: pure functions over a `MaskBatch`, no hidden state.

Every selection answers with `mask_ids` (stable across filtering), never with row positions.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from fastsam_core import rle as rle_utils
from fastsam_core.batch import MaskBatch

NO_MASK = -1


def _points(points_xy: np.ndarray, labels: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(points_xy, np.float64).reshape(-1, 2) if len(points_xy) else np.zeros((0, 2))
    lab = np.ones(len(p), np.int64) if labels is None else np.asarray(labels, np.int64).reshape(-1)
    if lab.shape != (len(p),):
        raise ValueError(f"labels must have shape ({len(p)},) like the points, but got shape {lab.shape}")
    if not np.isin(lab, (0, 1)).all():
        raise ValueError(f"labels must be 1 (foreground) or 0 (background), but got {sorted(set(lab.tolist()))}")
    return np.floor(p).astype(np.int64), lab


def select_by_points(batch: MaskBatch, points_xy: np.ndarray, labels: np.ndarray | None = None) -> MaskBatch:
    """The masks that hold a foreground point and no background point.

    Args:
        batch: masks of one image.
        points_xy: (K, 2) (x, y) pixels; a point outside the image is in no mask.
        labels: (K,) 1 foreground, 0 background; all foreground when None.

    Returns:
        The selected rows, in batch order (empty when no foreground point falls in a mask).
    """
    p, lab = _points(points_xy, labels)
    inside = _inside(batch, p)
    return batch[inside[:, lab == 1].any(1) & ~inside[:, lab == 0].any(1)]


def _inside(batch: MaskBatch, p: np.ndarray) -> np.ndarray:
    """(N, K) bool: whether mask n holds integer point k."""
    if len(batch) == 0 or len(p) == 0:
        return np.zeros((len(batch), len(p)), bool)
    return np.stack([rle_utils.contains_points(r, p) for r in batch.rles])


def merge_masks(rles: list, image_hw: tuple[int, int], minus: list | None = None, morphology: bool = True) -> dict:
    """One mask: the union of `rles` minus the union of `minus`, smoothed as FastSAM does.

    Args:
        rles: masks to join.
        image_hw: (h, w), used when `rles` is empty.
        minus: masks whose pixels are removed.
        morphology: close with a 3x3 kernel, then open with an 8x8 one (FastSAM's clean-up).

    Returns:
        One RLE.
    """
    h, w = image_hw
    acc = np.zeros((h, w), np.uint8)
    for r in rles:
        acc |= rle_utils.decode(r)
    for r in minus or ():
        acc &= 1 - rle_utils.decode(r)
    if morphology:
        acc = cv2.morphologyEx(acc, cv2.MORPH_CLOSE, np.ones((3, 3), np.uint8))
        acc = cv2.morphologyEx(acc, cv2.MORPH_OPEN, np.ones((8, 8), np.uint8))
    return rle_utils.encode(acc)[0]


def merge_by_points(
    batch: MaskBatch, points_xy: np.ndarray, labels: np.ndarray | None = None, morphology: bool = True
) -> dict:
    """FastSAM's single-mask point answer: foreground masks joined, background masks' pixels removed."""
    p, lab = _points(points_xy, labels)
    inside = _inside(batch, p)
    fg, bg = batch[inside[:, lab == 1].any(1)], batch[inside[:, lab == 0].any(1)]
    return merge_masks(fg.rles, batch.image_hw, minus=bg.rles, morphology=morphology)


def box_iou(batch: MaskBatch, boxes_xyxy: np.ndarray) -> np.ndarray:
    """IoU of each prompt box, clipped to the image, with each mask's tight box.

    Args:
        batch: masks of one image.
        boxes_xyxy: (K, 4) XYXY pixels.

    Returns:
        (K, N) float64, rows in prompt order, columns in batch order; 0 for a box empty after clipping.
    """
    b = np.asarray(boxes_xyxy, np.float64).reshape(-1, 4)
    h, w = batch.image_hw
    b = np.stack([b[:, 0].clip(0, w), b[:, 1].clip(0, h), b[:, 2].clip(0, w), b[:, 3].clip(0, h)], 1)
    if len(batch) == 0 or len(b) == 0:
        return np.zeros((len(b), len(batch)))
    mb = batch.bboxes_xywh()
    mb = np.concatenate([mb[:, :2], mb[:, :2] + mb[:, 2:]], 1)
    iw = (np.minimum(b[:, None, 2], mb[None, :, 2]) - np.maximum(b[:, None, 0], mb[None, :, 0])).clip(0)
    ih = (np.minimum(b[:, None, 3], mb[None, :, 3]) - np.maximum(b[:, None, 1], mb[None, :, 1])).clip(0)
    inter = iw * ih
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    area_m = (mb[:, 2] - mb[:, 0]) * (mb[:, 3] - mb[:, 1])
    iou = inter / np.maximum(area_b[:, None] + area_m[None] - inter, 1e-9)
    return np.where(area_b[:, None] > 0, iou, 0.0)


def select_by_boxes(batch: MaskBatch, boxes_xyxy: np.ndarray) -> np.ndarray:
    """For each prompt box, the mask whose tight box has the highest IoU with it (see `box_iou`).

    Args:
        batch: masks of one image.
        boxes_xyxy: (K, 4) XYXY pixels; each is clipped to the image first.

    Returns:
        (K,) int mask_ids in prompt order; NO_MASK (-1) for a box that is empty after clipping or
        overlaps no mask. Ties go to the higher-scoring (earlier) mask.
    """
    iou = box_iou(batch, boxes_xyxy)
    out = np.full(len(iou), NO_MASK, np.int64)
    if iou.shape[1] == 0:
        return out
    best = iou.argmax(1)
    ok = iou[np.arange(len(iou)), best] > 0
    out[ok] = batch.mask_ids[best[ok]]
    return out


def best_mask_per_prompt(batch: MaskBatch, n_prompts: int) -> np.ndarray:
    """FastSAM's text answer: for each positive prompt, the scored mask most similar to it.

    Args:
        batch: a batch with the "clip_cosine" column from `fastsam_core.scoring.score_images`.
        n_prompts: number of positive prompts (the first columns).

    Returns:
        (P,) int mask_ids; NO_MASK where no mask was scored.
    """
    cos = batch.columns["clip_cosine"][:, :n_prompts]
    out = np.full(n_prompts, NO_MASK, np.int64)
    scored = ~np.isnan(cos).all(1)
    if scored.any():
        out[:] = batch.mask_ids[scored][np.nanargmax(cos[scored], axis=0)]
    return out


@dataclass(frozen=True)
class InstanceLabels:
    """Per-mask labels from `label_instances`.

    Attributes:
        label: (N,) int prompt index, or NO_MASK (-1) for unlabelled masks.
        score: (N,) float32 probability of the label (softmax over all prompts); NaN if unlabelled.
    """

    label: np.ndarray
    score: np.ndarray


def label_instances(batch: MaskBatch, n_prompts: int, threshold: float = 0.5) -> InstanceLabels:
    """All-instances mode: every mask gets its best positive prompt when that prompt is convincing.

    A mask is labelled with prompt j = argmax of its positive similarities when its probability
    (softmax over positives and negatives) is at least `threshold` and its similarity beats every
    negative prompt's. Unscored masks stay unlabelled.
    """
    if not 0 <= threshold <= 1:
        raise ValueError(f"threshold must be in [0, 1], but got {threshold}")
    cos, prob = batch.columns["clip_cosine"], batch.columns["clip_prob"]
    n = len(batch)
    label = np.full(n, NO_MASK, np.int64)
    score = np.full(n, np.nan, np.float32)
    scored = ~np.isnan(cos).any(1) if n else np.zeros(0, bool)
    if not scored.any():
        return InstanceLabels(label, score)
    pos = cos[scored, :n_prompts]
    best = pos.argmax(1)
    best_cos = pos[np.arange(len(best)), best]
    best_prob = prob[scored, :n_prompts][np.arange(len(best)), best]
    neg = cos[scored, n_prompts:]
    beats_neg = best_cos > (neg.max(1) if neg.shape[1] else -np.inf)
    ok = (best_prob >= threshold) & beats_neg
    rows = np.flatnonzero(scored)[ok]
    label[rows] = best[ok]
    score[rows] = best_prob[ok]
    return InstanceLabels(label, score)


#: How text prompts turn into per-mask labels (`with_labels`).
SELECTION_MODES = ("instances", "best", "none")


def with_labels(batch: MaskBatch, n_prompts: int, mode: str = "instances", threshold: float = 0.5) -> MaskBatch:
    """The batch with its label columns "label" and "label_score".

    "label" is (N,) int64, the prompt index or NO_MASK; "label_score" (N,) float32, the probability of
    that prompt (NaN when unlabelled).

    Args:
        batch: a scored batch ("clip_cosine" and "clip_prob" columns).
        n_prompts: number of positive prompts (the first score columns).
        mode: "instances" (`label_instances`: every convincing mask), "best" (FastSAM's text mode:
            the most similar mask per prompt; a mask that is the best for several prompts takes the one
            it matches most), "none" (scores only: every mask unlabelled).
        threshold: minimum probability for "instances".
    """
    n = len(batch)
    if mode == "instances":
        lab = label_instances(batch, n_prompts, threshold)
        return batch.with_columns(label=lab.label, label_score=lab.score)
    if mode not in SELECTION_MODES:
        raise ValueError(f"mode must be one of {SELECTION_MODES}, but got {mode!r}")
    label = np.full(n, NO_MASK, np.int64)
    score = np.full(n, np.nan, np.float32)
    if mode == "best":
        cos, prob = batch.columns["clip_cosine"], batch.columns["clip_prob"]
        row_of = {int(m): i for i, m in enumerate(batch.mask_ids)}
        for j, mid in enumerate(best_mask_per_prompt(batch, n_prompts)):
            if mid == NO_MASK:
                continue
            i = row_of[int(mid)]
            if label[i] == NO_MASK or cos[i, j] > cos[i, label[i]]:
                label[i], score[i] = j, prob[i, j]
    return batch.with_columns(label=label, label_score=score)


def scored_batch(mask_ids: np.ndarray, cosine: np.ndarray, prob: np.ndarray) -> MaskBatch:
    """A batch holding only mask ids and scores, for `with_labels` on masks read back from a table.

    Labelling looks at mask ids and the score columns only; the geometry columns are placeholders.
    """
    n = len(mask_ids)
    z = np.zeros(n)
    rles = [{"size": [0, 0], "counts": b""}] * n
    return MaskBatch((0, 0), np.zeros((n, 4)), z, rles, z, z, mask_ids, {"clip_cosine": cosine, "clip_prob": prob})
