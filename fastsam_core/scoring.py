"""Score every mask against text prompts.

Each mask is cut out of the image: its tight box (plus a margin), pixels outside the mask filled
with a neutral colour so that neighbours do not leak into the crop, padded to a square so that
CLIP's centre crop keeps the whole object. Masks of `min_area` pixels or fewer are not scored
(FastSAM skips <= 100 px); their scores are NaN.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fastsam_core import rle as rle_utils
from fastsam_core.batch import MaskBatch
from fastsam_core.embedders import Embedder

#: CLIP's normalisation mean as RGB uint8: the fill becomes ~0 after normalisation.
NEUTRAL_FILL = (122, 116, 104)


def mask_crops(
    image: np.ndarray,
    batch: MaskBatch,
    rows: Sequence[int],
    margin: float = 0.05,
    fill: tuple[int, int, int] = NEUTRAL_FILL,
) -> list[np.ndarray]:
    """Square crops of the given rows' masks.

    Args:
        image: (H, W, 3) RGB uint8, the image the batch was made from.
        batch: the image's masks.
        rows: row positions in `batch` to crop.
        margin: extra context around the box, as a fraction of the box's longer side.
        fill: RGB colour outside the mask.

    Returns:
        One (S, S, 3) uint8 crop per row.
    """
    h, w = batch.image_hw
    if image.shape[:2] != (h, w):
        raise ValueError(f"image has shape {image.shape[:2]}, but the masks were made for {(h, w)}")
    boxes = batch.bboxes_xywh()
    crops = []
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
        crops.append(sq)
    return crops


def score_masks(
    image: np.ndarray,
    batch: MaskBatch,
    embedder: Embedder,
    prompts: Sequence[str],
    negatives: Sequence[str] = (),
    min_area: int = 100,
    margin: float = 0.05,
) -> MaskBatch:
    """Similarity of every mask to every prompt.

    Returns:
        `batch` with two more columns, both (N, P + Q) float32 with the positive prompts first,
        then the negatives, NaN for masks not scored:
        "clip_cosine" (cosine similarity) and "clip_prob" (softmax over all P + Q prompts of
        logit_scale * cosine).
    """
    if not prompts:
        raise ValueError("prompts must hold at least one text")
    texts = [*prompts, *negatives]
    n, k = len(batch), len(texts)
    cosine = np.full((n, k), np.nan, np.float32)
    prob = np.full((n, k), np.nan, np.float32)
    rows = np.flatnonzero(batch.areas > min_area)
    if rows.size:
        img_emb = embedder.embed_images(mask_crops(image, batch, rows, margin))
        txt_emb = embedder.embed_texts(texts)
        cos = img_emb @ txt_emb.T
        z = embedder.logit_scale * cos
        z = np.exp(z - z.max(1, keepdims=True))
        cosine[rows] = cos
        prob[rows] = z / z.sum(1, keepdims=True)
    return batch.with_columns(clip_cosine=cosine, clip_prob=prob)
