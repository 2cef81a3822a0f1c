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

Shapes: a source is an (Hs, Ws) grid (one mask's logits, cropped to the image content, perhaps
upsampled first: `fastsam_core.grids`), read only at cell corners; taps are `resample.AxisTaps` as
NumPy arrays (`numpy_taps`); windows are (y1 - y0, x1 - x0).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fastsam_core import rle as rle_utils
from fastsam_core.grids import Plain, Upsampled
from fastsam_core.resample import AxisTaps

#: Bound on the float error of two-stage bilinear interpolation, relative to the largest |corner|:
#: each stage adds at most ~4 units in the last place (two products, a sum, weights summing to 1 +- 1 ulp);
#: 2**-19 is 32 of them, so a cell classified as certain is certain.
_RELATIVE_ERROR = 2.0**-19
#: Absolute floor of that bound (products of tiny values lose precision to underflow).
_ABSOLUTE_ERROR = 1e-30


#: What a window is resampled from (`fastsam_core.grids`).
Grid = Plain | Upsampled


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
    """One mask window: its run lengths over the image and its stability counts.

    Attributes:
        counts: (K,) int64 run lengths of (value > 0) over the whole image, column-major, background
            first: what `rle.window_counts` gives for the thresholded window.
        above: pixels with value > +offset.
        union: pixels with value > -offset.
        computed: pixel values computed (the rest took their cell's answer).
    """

    counts: np.ndarray
    above: int
    union: int
    computed: int


class _Cells:
    """The source cells under a window, those that hold no output pixel left out.

    Attributes:
        rows, cols: (R,), (C,) each cell row's and column's source index (the taps' i0).
        lo, hi: (R, C) float64 bounds of each cell's four corners (the grid's `bounds`).
        rs: (R + 1,) first window row of each cell row, then the window's height.
        cs: (C + 1,) first window column of each cell column, then the window's width.
    """

    def __init__(self, grid: Grid, ri: np.ndarray, ci: np.ndarray):
        self.grid = grid
        self.rows, self.rs = _spans(ri)
        self.cols, self.cs = _spans(ci)
        self.lo, self.hi = grid.bounds(self.rows, self.cols)
        self.margin = np.maximum(-self.lo, self.hi) * _RELATIVE_ERROR + _ABSOLUTE_ERROR
        self._corners: dict[tuple[int, int], int] = {}

    def above(self, t: float) -> np.ndarray:
        """(R, C) bool: every pixel of the cell is > t."""
        return self.lo - t > self.margin

    def unsure(self, t: float) -> np.ndarray:
        """(R, C) bool: the cell's pixels may lie on either side of t."""
        return ~self.above(t) & (t - self.hi < self.margin)

    def corners(self, k: np.ndarray, m: np.ndarray) -> np.ndarray:
        """(4, K) float32 values at the (upper-left, lower-left, upper-right, lower-right) corners of cells (k, m).

        A cell's corners are its source row and the next, its column and the next, the last repeated at
        the edge (where the taps' i1 is i0): the four values every pixel of the cell is made of.
        """
        hs, ws = self.grid.shape
        r0, c0 = self.rows[k], self.cols[m]
        r1, c1 = np.minimum(r0 + 1, hs - 1), np.minimum(c0 + 1, ws - 1)
        return self.grid.points(np.concatenate([r0, r1, r0, r1]), np.concatenate([c0, c0, c1, c1])).reshape(4, -1)


def _spans(taps_i0: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(the distinct source indices of a window's rows or columns, the first window position of each + the end)."""
    starts = np.flatnonzero(np.diff(taps_i0)) + 1
    first = np.concatenate([[0], starts, [taps_i0.size]])
    return taps_i0[first[:-1]], first


def _pixels(ya: np.ndarray, yb: np.ndarray, xa: np.ndarray, xb: np.ndarray) -> tuple[np.ndarray, ...]:
    """Every pixel of K blocks [ya, yb) x [xa, xb), block by block, each column-major: (block, y, x) arrays."""
    hk, wk = yb - ya, xb - xa
    nk = hk * wk
    block = np.repeat(np.arange(nk.size), nk)
    local = np.arange(block.size) - np.repeat(np.cumsum(nk) - nk, nk)
    xl, yl = np.divmod(local, hk[block])
    return block, ya[block] + yl, xa[block] + xl


def _per_pixel(cells: _Cells, k: np.ndarray, m: np.ndarray) -> np.ndarray:
    """(4, N) corners of the cells (k, m) of N pixels, each distinct cell's computed once."""
    if k.size == 0:
        return np.zeros((4, 0), np.float32)
    key = k * cells.cols.size + m
    distinct, which = np.unique(key, return_inverse=True)
    return cells.corners(distinct // cells.cols.size, distinct % cells.cols.size)[:, which]


def _values(corners: np.ndarray, rows: NumpyTaps, cols: NumpyTaps, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """`resize_window`'s values at image pixels (yy, xx) from their cells' (4, N) corners: its float32 operations."""
    w0y, w1y, w0x, w1x = rows.w0[yy], rows.w1[yy], cols.w0[xx], cols.w1[xx]
    left = corners[0] * w0y + corners[1] * w1y  # rows first, as resize_window
    right = corners[2] * w0y + corners[3] * w1y
    return left * w0x + right * w1x


def window(
    grid: Grid,
    rows: NumpyTaps,
    cols: NumpyTaps,
    y0: int,
    y1: int,
    x0: int,
    x1: int,
    offset: float,
    image_hw: tuple[int, int],
) -> WindowResult:
    """Threshold `resize_window(src, rows[y0:y1], cols[x0:x1])` at 0 (as run lengths), +offset and -offset, exactly.

    The run lengths come from the cells: a boundary between two sure cells changes the mask in every
    column of the cell column at once; only the unsure cells are resolved pixel by pixel. Work
    grows with the cells, the unsure pixels and the runs, not with the window's area.

    Args:
        grid: the (Hs, Ws) source (`grids.Plain` or `grids.Upsampled`).
        rows: taps of every output row of the image (`numpy_taps`).
        cols: taps of every output column.
        y0: first row of the window, in output pixels.
        y1: its end (exclusive).
        x0: first column.
        x1: its end (exclusive).
        offset: the stability offset (compared in float32, as a float32 tensor compares with it).
        image_hw: (h, w) of the image.
    """
    h, w = image_hw
    hb, wb = y1 - y0, x1 - x0
    if hb <= 0 or wb <= 0:
        return WindowResult(np.array([h * w], np.int64), 0, 0, 0)
    off = float(np.float32(offset))
    cells = _Cells(grid, rows.i0[y0:y1], cols.i0[x0:x1])
    rs, cs = cells.rs, cells.cs
    nr, nc = np.diff(rs), np.diff(cs)
    sure_fg, unsure = cells.above(0.0), cells.unsure(0.0)
    R, C = sure_fg.shape
    # Changes down each column at boundaries between two sure cells (or a sure cell and the window's edge),
    # shared by every column of the cell column.
    pad_false = np.zeros((1, C), bool)
    upper, lower = np.vstack([pad_false, sure_fg]), np.vstack([sure_fg, pad_false])
    shaky = np.vstack([pad_false, unsure]) | np.vstack([unsure, pad_false])
    bk, bm = np.nonzero((upper != lower) & ~shaky)  # boundary above cell row bk (bk = R: the bottom), column bm
    repeat = nc[bm]
    x_sure = np.repeat(cs[bm], repeat) + (np.arange(repeat.sum()) - np.repeat(np.cumsum(repeat) - repeat, repeat))
    y_sure = np.repeat(rs[bk], repeat)
    # Unsure cells pixel by pixel, with the row above and the row below, so their edges are resolved too.
    uk, um = np.nonzero(unsure)
    block, yy, xx = _pixels(rs[uk] - 1, rs[uk + 1] + 1, cs[um], cs[um + 1])
    top, bottom = rs[uk][block], rs[uk + 1][block]
    inside = (yy >= 0) & (yy < hb)
    k = uk[block] - (yy < top) + (yy >= bottom)  # the row above is the upper cell's, the row below the lower's
    fg = np.zeros(yy.size, bool)
    corners = _per_pixel(cells, k[inside], um[block[inside]])
    fg[inside] = _values(corners, rows, cols, yy[inside] + y0, xx[inside] + x0) > 0
    computed = int(inside.sum())
    change = np.zeros(yy.size, bool)
    change[1:] = fg[1:] != fg[:-1]
    change &= yy >= top  # not across two columns or blocks (each column starts at its row above)
    below_unsure = np.zeros(uk.size, bool)
    has_below = uk + 1 < R
    below_unsure[has_below] = unsure[uk[has_below] + 1, um[has_below]]
    change &= (yy < bottom) | ~below_unsure[block]  # the cell below resolves its own top edge
    y_px, x_px = yy[change], xx[change]
    pos = np.concatenate([(x0 + x_sure) * h + y0 + y_sure, (x0 + x_px) * h + y0 + y_px])
    pos.sort()
    counts = rle_utils.counts_from_changes(pos, h * w)
    # Stability: sure cells counted by their pixel counts, unsure cells pixel by pixel.
    stab = {}
    for t in (off, -off):
        count = int(nr @ cells.above(t).astype(np.int64) @ nc)
        sk, sm = np.nonzero(cells.unsure(t))
        if sk.size:
            block, yy, xx = _pixels(rs[sk], rs[sk + 1], cs[sm], cs[sm + 1])
            corners = _per_pixel(cells, sk[block], sm[block])
            count += int(np.count_nonzero(_values(corners, rows, cols, yy + y0, xx + x0) > t))
            computed += yy.size
        stab[t] = count
    return WindowResult(counts, stab[off], stab[-off], computed)
