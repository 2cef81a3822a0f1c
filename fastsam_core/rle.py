"""COCO run-length encoding, vectorised.

An RLE is a dict ``{"size": [h, w], "counts": bytes}``: runs over the mask flattened in
column-major order, starting with a run of background (possibly of length 0), compressed into
pycocotools' string format. Everything written here is byte-identical to
``pycocotools.mask.encode`` and decodes with ``pycocotools.mask.decode``.

Masks are encoded from *windows*: the part of a mask inside a box, placed at an origin in a larger
image. The runs of a whole chunk of windows come out of one ``diff``/``nonzero`` on the device and
one host transfer, instead of a loop with a sync per mask. The string codec is numpy-vectorised
(pycocotools has no public counts<->string API).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pycocotools.mask as mask_utils
import torch

RLE = dict  # {"size": [h, w], "counts": bytes}

_MAX_CHARS = 8  # a 32-bit run length needs at most 7 chars of 5 bits (plus sign)


def counts_to_string(counts: np.ndarray) -> bytes:
    """Compress run lengths into pycocotools' string format (the inverse of `string_to_counts`).

    Args:
        counts: (K,) non-negative run lengths, background first.
    """
    return counts_to_strings([counts])[0]


def counts_to_strings(many: Sequence[np.ndarray]) -> list[bytes]:
    """`counts_to_string` of every mask of a batch, in one vectorised pass over all their runs."""
    if not many:
        return []
    sizes = np.array([len(c) for c in many], np.int64)
    c = np.concatenate([np.zeros(0, np.int64), *(np.asarray(m, np.int64) for m in many)])
    # runs after the third of each mask are stored as a difference to the run two before
    local = np.arange(c.size) - np.repeat(np.cumsum(sizes) - sizes, sizes)
    x = c.copy()
    later = np.flatnonzero(local >= 3)
    x[later] -= c[later - 2]
    chars = np.zeros((x.size, _MAX_CHARS), np.uint8)
    valid = np.zeros((x.size, _MAX_CHARS), bool)
    more = np.ones(x.size, bool)
    for i in range(_MAX_CHARS):
        part = x & 0x1F
        x = x >> 5  # arithmetic shift: negative values stay negative, as in the C code
        more_after = np.where(part & 0x10, x != -1, x != 0)
        valid[:, i] = more
        chars[:, i] = (part | (more_after << 5)) + 48
        more = more & more_after
    owner = np.repeat(np.arange(len(many)), sizes)
    per_mask = np.bincount(owner, weights=valid.sum(1), minlength=len(many)).astype(np.int64)
    ends = np.cumsum(per_mask)
    flat = chars[valid].tobytes()
    return [flat[e - k : e] for e, k in zip(ends.tolist(), per_mask.tolist(), strict=True)]


def string_to_counts(s: bytes | str) -> np.ndarray:
    """Decompress pycocotools' string format into (K,) int64 run lengths."""
    b = np.frombuffer(s.encode() if isinstance(s, str) else s, np.uint8).astype(np.int64) - 48
    if b.size == 0:
        return np.zeros(0, np.int64)
    ends = np.flatnonzero((b & 0x20) == 0)  # the last char of each value has no continuation bit
    starts = np.concatenate([[0], ends[:-1] + 1])
    group = np.repeat(np.arange(ends.size), ends - starts + 1)
    shift = 5 * (np.arange(b.size) - starts[group])
    x = np.add.reduceat((b & 0x1F) << shift, starts)
    negative = (b[ends] & 0x10) != 0
    x[negative] -= np.int64(1) << (5 * (ends - starts + 1))[negative]
    # Undo the difference coding: counts[i] = x[i] + counts[i - 2] for i >= 3.
    c = x.copy()
    c[1::2][1:] = np.cumsum(x[1::2])[1:]
    c[2::2] = np.cumsum(x[2::2])
    return c


def counts_from_changes(pos: np.ndarray, n_pixels: int) -> np.ndarray:
    """Run lengths from sorted change positions in [0, n_pixels] (equal pairs cancel)."""
    if pos.size:
        same = np.flatnonzero(pos[1:] == pos[:-1])
        if same.size:  # a run ends at the bottom of a column and goes on at the top of the next
            keep = np.ones(pos.size, bool)
            keep[same] = keep[same + 1] = False
            pos = pos[keep]
        pos = pos[pos < n_pixels]
    return np.diff(np.concatenate([[0], pos, [n_pixels]]))


def window_counts(
    windows: Sequence[torch.Tensor], origins_yx: Sequence[tuple[int, int]], image_hw: tuple[int, int]
) -> list[np.ndarray]:
    """Uncompressed run lengths of masks given as windows of a larger image.

    Args:
        windows: N tensors (hb_i, wb_i), bool or 0/1, on any one device; pixels outside a window are 0.
        origins_yx: N (y0, x0) pixel positions of each window's top-left corner in the image.
        image_hw: (h, w) of the image; every window must lie inside it.

    Returns:
        N int64 arrays of run lengths over the whole image (column-major, background first).
    """
    h, w = image_hw
    n = len(windows)
    if n == 0:
        return []
    heights = np.array([t.shape[0] for t in windows], np.int64)
    widths = np.array([t.shape[1] for t in windows], np.int64)
    oy, ox = (np.array([o[i] for o in origins_yx], np.int64).reshape(n) for i in (0, 1))
    if (oy < 0).any() or (ox < 0).any() or (oy + heights > h).any() or (ox + widths > w).any():
        raise ValueError(f"every window must lie inside the image of size {image_hw} (h, w)")
    # Each window column-major with a 0 above and below every column, all windows end to end.
    flat = torch.cat([torch.nn.functional.pad(t.T.to(torch.uint8), (1, 1)).reshape(-1) for t in windows])
    change = (torch.nonzero(flat[1:] != flat[:-1]).squeeze(1) + 1).cpu().numpy()  # the one host sync
    sizes = widths * (heights + 2)
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    which = np.searchsorted(offsets, change, side="right") - 1
    local = change - offsets[which]
    col, row = np.divmod(local, heights[which] + 2)
    pos = (ox[which] + col) * h + oy[which] + row - 1
    bounds = np.searchsorted(which, np.arange(n + 1))
    return [counts_from_changes(pos[bounds[i] : bounds[i + 1]], h * w) for i in range(n)]


def from_counts(counts: np.ndarray, image_hw: tuple[int, int]) -> RLE:
    """The RLE dict of uncompressed run lengths."""
    return from_many_counts([counts], image_hw)[0]


def from_many_counts(many: Sequence[np.ndarray], image_hw: tuple[int, int]) -> list[RLE]:
    """The RLE dicts of several masks' run lengths (compressed in one pass)."""
    size = [int(image_hw[0]), int(image_hw[1])]
    return [{"size": list(size), "counts": s} for s in counts_to_strings(many)]


def encode_windows(
    windows: Sequence[torch.Tensor], origins_yx: Sequence[tuple[int, int]], image_hw: tuple[int, int]
) -> list[RLE]:
    """Encode masks given as windows of a larger image (arguments as in `window_counts`); N RLE dicts."""
    return from_many_counts(window_counts(windows, origins_yx, image_hw), image_hw)


def encode(masks: torch.Tensor | np.ndarray) -> list[RLE]:
    """Encode (N, H, W) or (H, W) binary masks; equal to ``pycocotools.mask.encode`` byte for byte."""
    m = torch.as_tensor(masks)
    if m.ndim == 2:
        m = m[None]
    if m.ndim != 3:
        raise ValueError(f"masks must have shape (N, H, W) or (H, W), but got shape {tuple(m.shape)}")
    return encode_windows(list(m), [(0, 0)] * len(m), tuple(m.shape[1:]))


def decode(rle: RLE) -> np.ndarray:
    """The (h, w) uint8 mask of one RLE (pycocotools)."""
    return mask_utils.decode(rle)


def area(rle: RLE) -> int:
    """Number of foreground pixels."""
    return int(string_to_counts(rle["counts"])[1::2].sum())


def bbox_xywh(rles: Sequence[RLE]) -> np.ndarray:
    """(N, 4) float64 tight boxes in XYWH pixels (pycocotools); zeros for empty masks."""
    if not rles:
        return np.zeros((0, 4))
    return np.asarray(mask_utils.toBbox(list(rles)), dtype=np.float64).reshape(-1, 4)


def decode_window(rle: RLE, box_xyxy: tuple[int, int, int, int]) -> np.ndarray:
    """Decode only the pixels inside an integer box, without building the whole mask.

    Args:
        rle: one RLE.
        box_xyxy: (x0, y0, x1, y1) integer pixels, end-exclusive, inside the image.

    Returns:
        (y1 - y0, x1 - x0) bool.
    """
    h = rle["size"][0]
    x0, y0, x1, y1 = box_xyxy
    counts = string_to_counts(rle["counts"])
    ends = np.cumsum(counts)
    lo, hi = x0 * h, x1 * h  # the columns x0..x1 are one contiguous span in column-major order
    first, last = np.searchsorted(ends, lo, side="right"), np.searchsorted(ends, hi, side="left")
    idx = np.arange(first, min(last + 1, counts.size))
    run_start = np.maximum(ends[idx] - counts[idx], lo)
    run_end = np.minimum(ends[idx], hi)
    strip = np.repeat((idx % 2 == 1), np.maximum(run_end - run_start, 0))
    return strip.reshape(x1 - x0, h).T[y0:y1]


def contains_points(rle: RLE, points_xy: np.ndarray) -> np.ndarray:
    """Whether each (x, y) integer pixel lies in the mask; points outside the image give False.

    Args:
        rle: one RLE.
        points_xy: (K, 2) integer pixels.

    Returns:
        (K,) bool.
    """
    h, w = rle["size"]
    p = np.asarray(points_xy, np.int64).reshape(-1, 2)
    inside = (p[:, 0] >= 0) & (p[:, 0] < w) & (p[:, 1] >= 0) & (p[:, 1] < h)
    ends = np.cumsum(string_to_counts(rle["counts"]))
    run = np.searchsorted(ends, p[:, 0] * h + p[:, 1], side="right")
    return inside & (run % 2 == 1)
