"""Retina mask windows on the CPU: the bilinear resize evaluated only where a threshold can be crossed.

Everything mode resizes each mask's logits to its box window at the original resolution
(`resample.resize_window`), keeps the pixels > 0 and counts the pixels > +offset and > -offset for
its stability. A bilinear output pixel is a convex combination of the four corners of one source
cell, so where all four lie on one side of a threshold by more than the float error of the two
interpolation stages, every output pixel of that cell lies on that side too. Here the source cells
under a window are classified once (a few thousand cells instead of up to millions of pixels), each
window pixel takes its cell's answer, and only the pixels of cells that straddle a threshold are
computed, with the float32 operations of `resize_window` in its order, so the masks and the
stability counts are bit for bit those of the dense path (tests compare them), at a fraction of its
work on large windows. The dense path stays for GPUs, where it is cheap and this one would sync.

Shapes: a source is an (Hs, Ws) float32 array (one mask's logits, cropped to the image content);
taps are `resample.AxisTaps` as NumPy arrays (`numpy_taps`); windows are (y1 - y0, x1 - x0).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fastsam_core.resample import AxisTaps

#: Bound on the float error of two-stage bilinear interpolation, relative to the largest |corner|:
#: each stage adds at most ~4 units in the last place (two products, a sum, weights summing to 1 +- 1 ulp);
#: 2**-19 is 32 of them, so a cell classified as certain is certain.
_RELATIVE_ERROR = 2.0**-19
#: Absolute floor of that bound (products of tiny values lose precision to underflow).
_ABSOLUTE_ERROR = 1e-30


@dataclass(frozen=True)
class NumpyTaps:
    """`AxisTaps` as NumPy arrays: i0, i1 (n,) int64 source indices; w0, w1 (n,) float32 weights."""

    i0: np.ndarray
    i1: np.ndarray
    w0: np.ndarray
    w1: np.ndarray


def numpy_taps(t: AxisTaps) -> NumpyTaps:
    """The taps on the host, as NumPy arrays (the same values)."""
    return NumpyTaps(*(x.cpu().numpy() for x in (t.i0, t.i1, t.w0, t.w1)))


@dataclass(frozen=True)
class WindowResult:
    """One mask window: the (hb, wb) bool mask (value > 0) and the stability counts.

    Attributes:
        binary: (hb, wb) bool, C-contiguous.
        above: pixels with value > +offset.
        union: pixels with value > -offset.
        computed: pixels whose value was computed (the rest took their cell's answer).
    """

    binary: np.ndarray
    above: int
    union: int
    computed: int


def window(
    src: np.ndarray, rows: NumpyTaps, cols: NumpyTaps, y0: int, y1: int, x0: int, x1: int, offset: float
) -> WindowResult:
    """Threshold `resize_window(src, rows[y0:y1], cols[x0:x1])` at 0, +offset and -offset, exactly.

    Args:
        src: (Hs, Ws) float32 source (any strides).
        rows: taps of every output row of the image (`numpy_taps`).
        cols: taps of every output column.
        y0: first row of the window, in output pixels.
        y1: its end (exclusive).
        x0: first column.
        x1: its end (exclusive).
        offset: the stability offset (compared in float32, as a float32 tensor compares with it).
    """
    hb, wb = y1 - y0, x1 - x0
    if hb <= 0 or wb <= 0:
        return WindowResult(np.zeros((max(hb, 0), max(wb, 0)), bool), 0, 0, 0)
    off = float(np.float32(offset))
    hs, ws = src.shape
    ri, ci = rows.i0[y0:y1], cols.i0[x0:x1]
    ra, rb, ca, cb = int(ri[0]), int(ri[-1]), int(ci[0]), int(ci[-1])
    # The corners of cells ra..rb x ca..cb: one more row and column, the last repeated at the edge
    # (where the taps' i1 is i0).
    corner_rows = np.minimum(np.arange(ra, rb + 2), hs - 1)
    corner_cols = np.minimum(np.arange(ca, cb + 2), ws - 1)
    c = src[corner_rows[:, None], corner_cols].astype(np.float64)
    lo = np.minimum(np.minimum(c[:-1, :-1], c[1:, :-1]), np.minimum(c[:-1, 1:], c[1:, 1:]))
    hi = np.maximum(np.maximum(c[:-1, :-1], c[1:, :-1]), np.maximum(c[:-1, 1:], c[1:, 1:]))
    margin = np.maximum(-lo, hi) * _RELATIVE_ERROR + _ABSOLUTE_ERROR
    above = {t: lo - t > margin for t in (0.0, off, -off)}  # every pixel of the cell is > t
    unsure = {t: ~above[t] & (t - hi < margin) for t in above}  # neither surely > t nor surely <= t
    lr, lc = ri - ra, ci - ca  # each window row's and column's cell
    binary = above[0.0][lr][:, lc]
    any_unsure = unsure[0.0] | unsure[off] | unsure[-off]
    nr = np.bincount(lr, minlength=rb - ra + 1)
    nc = np.bincount(lc, minlength=cb - ca + 1)
    counts = {t: int(nr @ above[t].astype(np.int64) @ nc) for t in (off, -off)}
    ys, xs = np.nonzero(any_unsure[lr][:, lc])
    if ys.size:
        yy, xx = ys + y0, xs + x0
        w0y, w1y, w0x, w1x = rows.w0[yy], rows.w1[yy], cols.w0[xx], cols.w1[xx]
        r0y, r1y, c0x, c1x = rows.i0[yy], rows.i1[yy], cols.i0[xx], cols.i1[xx]
        # resize_window's operations, pixel by pixel: rows first, then columns
        left = src[r0y, c0x] * w0y + src[r1y, c0x] * w1y
        right = src[r0y, c1x] * w0y + src[r1y, c1x] * w1y
        values = left * w0x + right * w1x
        binary[ys, xs] = values > 0
        cell_r, cell_c = lr[ys], lc[xs]
        for t in (off, -off):
            counts[t] += int(np.count_nonzero(unsure[t][cell_r, cell_c] & (values > t)))
    return WindowResult(binary, counts[off], counts[-off], int(ys.size))
