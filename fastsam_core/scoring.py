"""Score every mask against text prompts.

Each mask is cut out of the image: its tight box (plus a margin), pixels outside the mask filled
with a neutral colour so that neighbours do not leak into the crop, padded to a square so that
CLIP's centre crop keeps the whole object. Masks of `min_area` pixels or fewer are not scored
(FastSAM skips <= 100 px), nor masks beyond `max_masks` per image when it is set; their scores
are NaN. The crops of several images stream through the embedder together (`score_images`).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Sequence

import numpy as np

from fastsam_core import rle as rle_utils
from fastsam_core.batch import MaskBatch
from fastsam_core.embedders import Embedder

#: CLIP's normalisation mean as RGB uint8: the fill becomes ~0 after normalisation.
NEUTRAL_FILL = (122, 116, 104)


def iter_crops(
    image: np.ndarray,
    batch: MaskBatch,
    rows: Iterable[int],
    margin: float = 0.05,
    fill: tuple[int, int, int] = NEUTRAL_FILL,
) -> Iterator[np.ndarray]:
    """Square crops of the given rows' masks, one at a time (each mask is decoded inside its box only).

    Args:
        image: (H, W, 3) RGB uint8, the image the batch was made from.
        batch: the image's masks.
        rows: row positions in `batch` to crop.
        margin: extra context around the box, as a fraction of the box's longer side.
        fill: RGB colour outside the mask.

    Yields:
        One (S, S, 3) uint8 crop per row, S the longer side of the grown box.
    """
    h, w = batch.image_hw
    if image.shape[:2] != (h, w):
        raise ValueError(f"image has shape {image.shape[:2]}, but the masks were made for {(h, w)}")
    boxes = batch.bboxes_xywh()
    for i in rows:
        bx, by, bw, bh = boxes[i]
        pad = round(margin * max(bw, bh))
        x0, y0 = max(int(bx) - pad, 0), max(int(by) - pad, 0)
        x1, y1 = min(int(bx + bw) + pad, w), min(int(by + bh) + pad, h)
        m = rle_utils.decode_window(batch.rles[i], (x0, y0, x1, y1))
        crop = np.where(m[..., None], image[y0:y1, x0:x1], np.array(fill, np.uint8))
        s = max(crop.shape[:2])
        sq = np.empty((s, s, 3), np.uint8)
        sq[:] = fill
        oy, ox = (s - crop.shape[0]) // 2, (s - crop.shape[1]) // 2
        sq[oy : oy + crop.shape[0], ox : ox + crop.shape[1]] = crop
        yield sq


def mask_crops(
    image: np.ndarray,
    batch: MaskBatch,
    rows: Sequence[int],
    margin: float = 0.05,
    fill: tuple[int, int, int] = NEUTRAL_FILL,
) -> list[np.ndarray]:
    """`iter_crops` as a list (for tests and small images)."""
    return list(iter_crops(image, batch, rows, margin, fill))


def scored_rows(batch: MaskBatch, min_area: int = 100, max_masks: int | None = None) -> np.ndarray:
    """Row positions to score, ascending: masks larger than `min_area` px, at most `max_masks` of them.

    With `max_masks`, the rows kept are those with the highest detector score x stability (ties to
    the lower row); the others stay unscored.
    """
    rows = np.flatnonzero(batch.areas > min_area)
    if max_masks is not None and len(rows) > max_masks:
        quality = batch.scores[rows].astype(np.float64) * batch.stability[rows]
        rows = np.sort(rows[np.argsort(-quality, kind="stable")[:max_masks]])
    return rows


def similarities(img_emb: np.ndarray, txt_emb: np.ndarray, logit_scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Cosine similarity and prompt probabilities of N image embeddings against T text embeddings.

    Args:
        img_emb: (N, D) unit vectors (any float dtype; computed in float32).
        txt_emb: (T, D) float32 unit vectors.
        logit_scale: multiplies the cosines before the softmax over the T texts (CLIP: 100).

    Returns:
        (cosine, prob), both (N, T) float32.
    """
    cos = np.asarray(img_emb, np.float32) @ np.asarray(txt_emb, np.float32).T
    z = logit_scale * cos
    z = np.exp(z - z.max(1, keepdims=True))
    return cos, z / z.sum(1, keepdims=True)


def score_images(
    images: Sequence[np.ndarray],
    batches: Sequence[MaskBatch],
    embedder: Embedder,
    prompts: Sequence[str],
    negatives: Sequence[str] = (),
    min_area: int = 100,
    max_masks: int | None = None,
    margin: float = 0.05,
    keep_embeddings: bool = False,
) -> list[MaskBatch]:
    """Similarity of every mask of several images to every prompt, in one stream of crops.

    The crops of all images go through the embedder together, so its forward passes stay full
    across image boundaries; crops are cut lazily, as the embedder asks for them.

    Args:
        images: B (H, W, 3) RGB uint8 images.
        batches: their masks, one MaskBatch per image.
        embedder: the image/text model.
        prompts: P positive texts; may be empty with `keep_embeddings`.
        negatives: Q texts that veto a label.
        min_area: masks of this many pixels or fewer are not scored.
        max_masks: score at most this many masks per image (see `scored_rows`); None = all.
        margin: crop context, as a fraction of the box's longer side.
        keep_embeddings: also return each mask's image embedding.

    Returns:
        The B batches with, when there are prompts, two more columns, both (N, P + Q) float32 with
        the positive prompts first, then the negatives, NaN for masks not scored: "clip_cosine"
        (cosine similarity) and "clip_prob" (softmax over all P + Q prompts of logit_scale *
        cosine, `similarities`); with `keep_embeddings`, "clip_embedding": (N, D) float32 unit
        vectors, NaN rows for masks not scored.
    """
    if not prompts and not keep_embeddings:
        raise ValueError("prompts must hold at least one text")
    if len(images) != len(batches):
        raise ValueError(f"got {len(images)} images but {len(batches)} mask batches")
    texts = [*prompts, *negatives]
    rows = [scored_rows(b, min_area, max_masks) for b in batches]
    crops = itertools.chain.from_iterable(
        iter_crops(im, b, r, margin) for im, b, r in zip(images, batches, rows, strict=True)
    )
    img_emb = embedder.embed_images(crops) if sum(map(len, rows)) else None
    txt_emb = embedder.embed_texts(texts) if img_emb is not None and texts else None
    out, start = [], 0
    for b, r in zip(batches, rows, strict=True):
        columns = {}
        if texts:
            columns["clip_cosine"] = np.full((len(b), len(texts)), np.nan, np.float32)
            columns["clip_prob"] = np.full((len(b), len(texts)), np.nan, np.float32)
        if keep_embeddings:
            columns["clip_embedding"] = np.full((len(b), embedder.dim), np.nan, np.float32)
        if len(r):
            emb = img_emb[start : start + len(r)]
            start += len(r)
            if texts:
                columns["clip_cosine"][r], columns["clip_prob"][r] = similarities(emb, txt_emb, embedder.logit_scale)
            if keep_embeddings:
                columns["clip_embedding"][r] = emb
        out.append(b.with_columns(**columns))
    return out


def score_masks(
    image: np.ndarray,
    batch: MaskBatch,
    embedder: Embedder,
    prompts: Sequence[str],
    negatives: Sequence[str] = (),
    min_area: int = 100,
    margin: float = 0.05,
    max_masks: int | None = None,
) -> MaskBatch:
    """`score_images` for one image."""
    return score_images([image], [batch], embedder, prompts, negatives, min_area, max_masks, margin)[0]
