"""Masks in the formats of review and training tools: Label Studio's brush RLE, and polygons.

Label Studio's brush RLE is not COCO RLE: it run-length codes the *RGBA* image of the mask (255 in
every channel where the mask is, 0 elsewhere), flattened row-major, in a bit-packed stream:

    32 bits   number of values (height * width * 4)
    5 bits    word size - 1 (7: values are 8-bit)
    4 x 4     the four run-length field sizes - 1 (3, 4, 8, 16 bits)
    per run   1 bit "series", 2 bits which length field, length - 1 in that many bits, 8-bit value

and the stream is padded with zero bits to whole bytes. `label_studio_converter.brush.decode_rle`
is the reference decoder (the tests check every mask with it); its own encoder builds a Python
string bit by bit, so this one is vectorised over runs.
"""

from __future__ import annotations

import numpy as np

#: Length-field sizes in bits (Label Studio's defaults) and the longest run each can hold.
_FIELD_BITS = np.array([3, 4, 8, 16])
_FIELD_MAX = 2**_FIELD_BITS
_WORD_BITS = 8


def _bits(values: np.ndarray, widths: np.ndarray) -> np.ndarray:
    """The big-endian bits of each value in its width, concatenated: (sum(widths),) uint8."""
    shifts = np.arange(31, -1, -1, dtype=np.uint64)
    table = ((values.astype(np.uint64)[:, None] >> shifts) & 1).astype(np.uint8)  # (N, 32)
    keep = np.arange(32)[None, :] >= (32 - widths)[:, None]
    return table[keep]


def ls_brush_rle(mask: np.ndarray) -> list[int]:
    """Label Studio's brush RLE of a mask.

    Args:
        mask: (H, W) bool or 0/1 array, in image orientation (row 0 at the top).

    Returns:
        The RLE bytes as a list of ints in [0, 255] (the `rle` field of a `brushlabels` result).
    """
    m = np.ascontiguousarray(mask, dtype=bool).reshape(-1)
    if m.size == 0:
        raise ValueError("mask is empty (0 pixels)")
    change = np.flatnonzero(m[1:] != m[:-1]) + 1
    starts = np.concatenate([[0], change])
    lengths = np.diff(np.concatenate([starts, [m.size]])).astype(np.int64) * 4  # every RGBA channel
    values = np.where(m[starts], 255, 0).astype(np.uint64)
    # Runs longer than the widest field are written as several runs.
    pieces = -(-lengths // _FIELD_MAX[-1])
    values = np.repeat(values, pieces)
    lengths = np.repeat(lengths, pieces) - _FIELD_MAX[-1] * (
        np.arange(pieces.sum()) - np.repeat(np.cumsum(pieces) - pieces, pieces)
    )
    lengths = np.minimum(lengths, _FIELD_MAX[-1])
    field = np.searchsorted(_FIELD_MAX, lengths)  # the smallest field that holds the length
    width = _FIELD_BITS[field]
    codes = (
        (np.uint64(1) << (2 + width + _WORD_BITS).astype(np.uint64))
        | (field.astype(np.uint64) << (width + _WORD_BITS).astype(np.uint64))
        | ((lengths - 1).astype(np.uint64) << np.uint64(_WORD_BITS))
        | values
    )
    header = np.array([m.size * 4, _WORD_BITS - 1, *(_FIELD_BITS - 1)], np.uint64)
    stream = np.concatenate([_bits(header, np.array([32, 5, 4, 4, 4, 4])), _bits(codes, 1 + 2 + width + _WORD_BITS)])
    return np.packbits(stream).tolist()  # packbits pads the last byte with zero bits


def largest_polygon(mask: np.ndarray) -> np.ndarray:
    """The largest outer contour of a mask, as polygon vertices.

    Args:
        mask: (H, W) bool or 0/1 array.

    Returns:
        (K, 2) float64 array of (x, y) pixel coordinates (centres of boundary pixels, OpenCV's
        CHAIN_APPROX_SIMPLE); K < 3 when the mask is too thin or small to have an area (a line, a
        pixel), (0, 2) when the mask is empty.
    """
    import cv2

    binary = np.ascontiguousarray(mask, dtype=np.uint8)
    contours, _ = cv2.findContours(binary, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    if not contours:
        return np.zeros((0, 2))
    best = max(contours, key=lambda c: (cv2.contourArea(c), len(c)))
    return best.reshape(-1, 2).astype(np.float64)
