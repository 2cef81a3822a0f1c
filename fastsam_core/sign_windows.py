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
from fastsam_core.grids import AxisCells, Plain, Upsampled
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
class Windows:
    """A chunk of mask windows: their run lengths over the image and their stability counts.

    Attributes:
        counts: N (K_i,) int64 run lengths of (value > 0) over the whole image, column-major,
            background first: what `rle.window_counts` gives for the thresholded windows.
        above: (N,) int64 pixels with value > +offset.
        union: (N,) int64 pixels with value > -offset.
        computed: pixel values computed in all (the rest took their cell's answer).
    """

    counts: list[np.ndarray]
    above: np.ndarray
    union: np.ndarray
    computed: int


def _expand(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(owner, index within owner) of sum(counts) items, owner i holding counts[i] of them."""
    owner = np.repeat(np.arange(counts.size), counts)
    return owner, np.arange(owner.size) - np.repeat(np.cumsum(counts) - counts, counts)


def windows(
    grid: Grid,
    rows: NumpyTaps,
    cols: NumpyTaps,
    row_cells: AxisCells,
    col_cells: AxisCells,
    boxes: np.ndarray,
    offset: float,
    image_hw: tuple[int, int],
) -> Windows:
    """Threshold `resize_window(grid[i], rows[y0:y1], cols[x0:x1])` of N windows at 0 (as run lengths) and +-offset.

    Exactly the dense path's results. The run lengths come from cells: a boundary between two sure
    cells changes the mask in every column of the cell column at once; only unsure cells are
    resolved pixel by pixel. Work grows with the cells, the unsure pixels and the runs, not with the
    windows' area, and every step runs on all N windows at once.

    Args:
        grid: the N (Hs, Ws) sources (`grids.Plain` or `grids.Upsampled`).
        rows: taps of every output row of the image (`numpy_taps`).
        cols: taps of every output column.
        row_cells: `grid.axis_cells(rows.i0, rows.i1, 0)`.
        col_cells: `grid.axis_cells(cols.i0, cols.i1, 1)`.
        boxes: (N, 4) int64 windows (x0, y0, x1, y1), end-exclusive, in output pixels.
        offset: the stability offset (compared in float32, as a float32 tensor compares with it).
        image_hw: (h, w) of the image.
    """
    h, w = image_hw
    n = boxes.shape[0]
    x0, y0, x1, y1 = (boxes[:, j].astype(np.int64) for j in range(4))
    hb, wb = y1 - y0, x1 - x0
    live = (hb > 0) & (wb > 0)
    off = float(np.float32(offset))
    # -- the cells of every window, flat: mask-major, then row-major ------------------------------
    g0r, nr_cells = np.zeros(n, np.int64), np.zeros(n, np.int64)
    g0c, nc_cells = np.zeros(n, np.int64), np.zeros(n, np.int64)
    if live.any():
        g0r[live], nr_cells[live] = row_cells.range(y0[live], y1[live])
        g0c[live], nc_cells[live] = col_cells.range(x0[live], x1[live])
    mask, local = _expand(nr_cells * nc_cells)
    kr, kc = np.divmod(local, nc_cells[mask])
    gr, gc = g0r[mask] + kr, g0c[mask] + kc
    ya = np.maximum(row_cells.start[gr] - y0[mask], 0)
    yb = np.minimum(row_cells.start[gr + 1] - y0[mask], hb[mask])
    xa = np.maximum(col_cells.start[gc] - x0[mask], 0)
    xb = np.minimum(col_cells.start[gc + 1] - x0[mask], wb[mask])
    lo, hi = grid.bounds(mask, row_cells.lo[gr], row_cells.hi[gr], col_cells.lo[gc], col_cells.hi[gc])
    margin = np.maximum(-lo, hi) * _RELATIVE_ERROR + _ABSOLUTE_ERROR
    above = {t: lo - t > margin for t in (0.0, off, -off)}  # every pixel of the cell is > t
    unsure = {t: ~above[t] & (t - hi < margin) for t in above}  # neither surely > t nor surely <= t
    step = nc_cells[mask]  # from a cell to the one below it
    first_row, last_row = kr == 0, kr == nr_cells[mask] - 1
    sure, shaky = above[0.0], unsure[0.0]
    above_idx = np.where(first_row, 0, np.arange(mask.size) - step)
    below_idx = np.where(last_row, 0, np.arange(mask.size) + step)

    # The grid values under the cells that are resolved pixel by pixel (the unsure ones, and the
    # neighbours whose edge rows they read): each such cell's grid rows x columns, computed once.
    uc = np.flatnonzero(shaky)
    needed = np.zeros(mask.size, bool)
    needed[uc] = True
    needed[above_idx[uc][~first_row[uc]]] = True
    needed[below_idx[uc][~last_row[uc]]] = True
    needed |= unsure[off] | unsure[-off]
    sel = np.flatnonzero(needed)
    slot = np.full(mask.size, -1, np.int64)
    slot[sel] = np.arange(sel.size)
    sm = mask[sel]
    g_r0, g_r1 = rows.i0[y0[sm] + ya[sel]], rows.i1[y0[sm] + yb[sel] - 1]  # grid rows the cell's pixels read
    g_c0, g_c1 = cols.i0[x0[sm] + xa[sel]], cols.i1[x0[sm] + xb[sel] - 1]
    g_w = g_c1 - g_c0 + 1
    size = (g_r1 - g_r0 + 1) * g_w
    owner, local = _expand(size)
    gy, gx = np.divmod(local, g_w[owner])
    g_values = grid.points(sm[owner], g_r0[owner] + gy, g_c0[owner] + gx)
    g_base = np.cumsum(size) - size

    def values(cell: np.ndarray, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
        """`resize_window`'s values at window pixels (yy, xx) of `cell`: its float32 operations, rows first."""
        k = slot[cell]
        m = sm[k]
        yi, xi = yy + y0[m], xx + x0[m]
        base, width = g_base[k], g_w[k]
        r0, r1 = (rows.i0[yi] - g_r0[k]) * width + base, (rows.i1[yi] - g_r0[k]) * width + base
        c0, c1 = cols.i0[xi] - g_c0[k], cols.i1[xi] - g_c0[k]
        w0y, w1y, w0x, w1x = rows.w0[yi], rows.w1[yi], cols.w0[xi], cols.w1[xi]
        left = g_values[r0 + c0] * w0y + g_values[r1 + c0] * w1y
        right = g_values[r0 + c1] * w0y + g_values[r1 + c1] * w1y
        return left * w0x + right * w1x

    # -- changes down each column at edges between sure cells (and the windows' edges), per cell column
    upper = np.where(first_row, False, sure[above_idx])
    top_edge = (upper != sure) & ~shaky & ~np.where(first_row, False, shaky[above_idx])
    bottom_edge = last_row & sure & ~shaky  # into the zeros below the window
    edge_cells = np.concatenate([np.flatnonzero(top_edge), np.flatnonzero(bottom_edge)])
    edge_y = np.concatenate([ya[top_edge], yb[bottom_edge]])
    owner, dx = _expand(xb[edge_cells] - xa[edge_cells])
    sure_key = _key(mask[edge_cells][owner], xa[edge_cells][owner] + dx, edge_y[owner], x0, y0, h, w)
    # -- unsure cells pixel by pixel, with the row above and the row below, so their edges are resolved
    owner, local = _expand((yb[uc] - ya[uc] + 2) * (xb[uc] - xa[uc]))
    dx, dy = np.divmod(local, (yb[uc] - ya[uc] + 2)[owner])
    cell, yy, xx = uc[owner], ya[uc][owner] - 1 + dy, xa[uc][owner] + dx
    inside = (yy >= 0) & (yy < hb[mask[cell]])
    of = np.where(yy < ya[cell], above_idx[cell], np.where(yy >= yb[cell], below_idx[cell], cell))
    fg = np.zeros(yy.size, bool)
    fg[inside] = values(of[inside], yy[inside], xx[inside]) > 0
    computed = int(inside.sum())
    change = np.zeros(yy.size, bool)
    change[1:] = fg[1:] != fg[:-1]
    change &= yy >= ya[cell]  # not across two columns or blocks (each column starts at its row above)
    below_shaky = ~last_row[cell] & shaky[below_idx[cell]]
    change &= (yy < yb[cell]) | ~below_shaky  # the cell below resolves its own top edge
    px_key = _key(mask[cell][change], xx[change], yy[change], x0, y0, h, w)
    # -- run lengths, window by window
    keys = np.concatenate([sure_key, px_key])
    keys.sort()
    span = np.int64(h) * w + 1
    bounds = np.searchsorted(keys, np.arange(n + 1, dtype=np.int64) * span)
    counts = [rle_utils.counts_from_changes(keys[bounds[i] : bounds[i + 1]] - i * span, h * w) for i in range(n)]
    # -- stability: sure cells by their pixel counts, unsure cells pixel by pixel
    pixels = (yb - ya) * (xb - xa)
    stab = {}
    for t in (off, -off):
        count = np.bincount(mask, weights=pixels * above[t], minlength=n)
        uc = np.flatnonzero(unsure[t])
        owner, local = _expand((yb[uc] - ya[uc]) * (xb[uc] - xa[uc]))
        dx, dy = np.divmod(local, (yb[uc] - ya[uc])[owner])
        cell = uc[owner]
        hit = values(cell, ya[cell] + dy, xa[cell] + dx) > t
        count += np.bincount(mask[cell][hit], minlength=n)
        computed += cell.size
        stab[t] = count.astype(np.int64)
    return Windows(counts, stab[off], stab[-off], computed)


def _key(m, x, y, x0, y0, h: int, w: int) -> np.ndarray:
    """Sort keys of changes: window m, then the change's column-major position in the image."""
    return m * (np.int64(h) * w + 1) + (x0[m] + x) * h + y0[m] + y
