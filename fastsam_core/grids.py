"""What mask windows are resampled from: plain maps, or logits upsampled by 2 or 4, computed only where read.

Retina masks whose letterbox padding is not a whole number of prototype pixels are first upsampled
by an integer factor f (`F.interpolate(..., scale_factor=f, mode="bilinear")`, as ultralytics does),
then resized to the image. Upsampling every mask's whole map costs f**2 times its prototype pixels
per mask; a window only reads the upsampled values at the pixels it must compute. `Upsampled`
gives those values alone, bit for bit what torch's CPU kernel writes: per output value, two fused
multiply-adds along the width, then one along the height (`fma(a, w0, b * w1)`), with the kernel's
float32 weights (exact for f = 2 and 4). The fused multiply-add is emulated exactly in float64
(`fma32`). Whether this machine's kernel computes that way is checked once per map shape against
`F.interpolate` itself (`upsampling_matches_torch`); where it does not, callers upsample with torch.

A grid also says how output pixels group into *cells* along each axis (`axis_cells`): runs of
pixels whose values are convex combinations of the same few source values (a plain map: the two
under the pixel's taps; an upsampled map: the prototype values under both interpolations, at most
three), and bounds each cell's values from those (`bounds`), so a caller can tell which cells a
threshold cannot cross.

Shapes: a grid holds N maps of (Hs, Ws) (one per mask of a chunk); `points(n, r, c)` is (K,) float32
at K (map, row, column) triples of the grid; `bounds(n, r_lo, r_hi, c_lo, c_hi)` is (K,) float64
least and greatest source values over K spans of rows x columns (at most 3 x 3).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class AxisCells:
    """The cells along one image axis: runs of output pixels whose values come from the same source span.

    Attributes:
        start: (G + 1,) int64 each cell's first output pixel, then the axis length.
        lo, hi: (G,) int64 the first and last source index of each cell's span (hi - lo <= 2).
    """

    start: np.ndarray
    lo: np.ndarray
    hi: np.ndarray

    @classmethod
    def of(cls, key: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> AxisCells:
        """Cells from each output pixel's cell key (non-decreasing) and source span: runs of equal keys."""
        starts = np.flatnonzero(np.diff(key)) + 1
        first = np.concatenate([[0], starts, [key.size]]).astype(np.int64)
        return cls(first, np.minimum.reduceat(lo, first[:-1]), np.maximum.reduceat(hi, first[:-1]))

    def range(self, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(first cell, cell count) of the output ranges [a, b) (non-empty)."""
        first = np.searchsorted(self.start, a, side="right") - 1
        last = np.searchsorted(self.start, b - 1, side="right") - 1
        return first, last - first + 1


def _span_bounds(src: np.ndarray, n, r_lo, r_hi, c_lo, c_hi) -> tuple[np.ndarray, np.ndarray]:
    """(K,) float64 least and greatest of src[n] over rows r_lo..r_hi x cols c_lo..c_hi (spans of at most 3)."""
    r3 = (r_lo, np.minimum(r_lo + 1, r_hi), r_hi)
    c3 = (c_lo, np.minimum(c_lo + 1, c_hi), c_hi)
    lo = hi = None
    for r in r3:
        for c in c3:
            v = src[n, r, c]
            lo = v if lo is None else np.minimum(lo, v)
            hi = v if hi is None else np.maximum(hi, v)
    return lo.astype(np.float64), hi.astype(np.float64)


class Plain:
    """N (Hs, Ws) float32 maps (one per mask) as grids.

    Args:
        src: (N, Hs, Ws) float32, any strides.
    """

    def __init__(self, src: np.ndarray):
        self.src = src
        self.shape = src.shape[1:]

    def axis_cells(self, i0: np.ndarray, i1: np.ndarray, axis: int) -> AxisCells:
        """Cells of an axis whose output pixels take taps i0, i1 of this grid: one per source index i0."""
        return AxisCells.of(i0, i0, i1)

    def points(self, n: np.ndarray, r: np.ndarray, c: np.ndarray) -> np.ndarray:
        """(K,) float32: src[n[i], r[i], c[i]]."""
        return self.src[n, r, c]

    def bounds(self, n, r_lo, r_hi, c_lo, c_hi) -> tuple[np.ndarray, np.ndarray]:
        """(K,) float64 least and greatest of the maps n over the spans."""
        return _span_bounds(self.src, n, r_lo, r_hi, c_lo, c_hi)


def fma32(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """float32 a * b + c rounded once (a fused multiply-add), for float32 arrays (broadcast).

    a * b is exact in float64 (24 + 24 bits); the sum is rounded to float64 and then to float32,
    which rounds twice only where the float64 sum falls on a float32 midpoint: there the sum's exact
    error (Knuth's two-sum) says which neighbour the exact value is nearer to.
    """
    p = a.astype(np.float64) * b
    c64 = np.asarray(c, np.float64)
    s = p + c64
    bv = s - p
    err = (p - (s - bv)) + (c64 - bv)
    r = s.astype(np.float32)
    d = s - r.astype(np.float64)
    toward = np.nextafter(r, np.where(d > 0, np.float32(np.inf), np.float32(-np.inf)))
    fix = (d != 0) & (2 * d == toward.astype(np.float64) - r) & (err != 0) & ((err > 0) == (d > 0))
    if fix.any():
        r = np.where(fix, toward, r)
    return r


def upsample_taps(n: int, f: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(i0, i1, w0, w1) of torch's bilinear upsampling by f (align_corners=False) along an axis of n values."""
    dst = np.arange(n * f, dtype=np.float32)
    src = np.maximum((dst + np.float32(0.5)) * np.float32(1.0 / f) - np.float32(0.5), np.float32(0))
    i0 = src.astype(np.int64)
    i1 = np.where(i0 < n - 1, i0 + 1, i0)
    w1 = (src - i0).astype(np.float32)
    return i0, i1, (np.float32(1) - w1).astype(np.float32), w1


class Upsampled:
    """N (mh, mw) float32 maps upsampled by f and cropped to [top:bottom, left:right], computed where read.

    Args:
        src: (N, mh, mw) float32 logits, one map per mask.
        f: 2 or 4.
        crop: (top, bottom, left, right) in upsampled pixels.
        taps: `upsample_taps` for the rows and the columns (shared by every mask of an image).
    """

    def __init__(self, src: np.ndarray, f: int, crop: tuple[int, int, int, int], taps: tuple[tuple, tuple]):
        self.src, self.f = src, f
        self.top, bottom, self.left, right = crop
        self.shape = (bottom - self.top, right - self.left)
        self.rows, self.cols = taps

    def axis_cells(self, i0: np.ndarray, i1: np.ndarray, axis: int) -> AxisCells:
        """Cells of an axis whose output pixels take taps i0, i1 of the upsampled grid: one per prototype index.

        An upsampled value is a convex combination of the prototype values under its own taps, so an
        output pixel's value lies within the prototype values from the first tap of its i0 to the
        second tap of its i1 (a span of at most three for f >= 2; the float error of both stages is
        the caller's margin).
        """
        up, offset = (self.rows, self.top) if axis == 0 else (self.cols, self.left)
        return AxisCells.of(up[0][offset + i0], up[0][offset + i0], up[1][offset + i1])

    def points(self, n: np.ndarray, r: np.ndarray, c: np.ndarray) -> np.ndarray:
        """(K,) float32: map n[i] upsampled, at row top + r[i] and column left + c[i]."""
        ri0, ri1, rw0, rw1 = (t[self.top + r] for t in self.rows)
        ci0, ci1, cw0, cw1 = (t[self.left + c] for t in self.cols)
        s = self.src
        upper = fma32(s[n, ri0, ci0], cw0, s[n, ri0, ci1] * cw1)  # along the width first, as torch's kernel
        lower = fma32(s[n, ri1, ci0], cw0, s[n, ri1, ci1] * cw1)
        return fma32(upper, rw0, lower * rw1)

    def bounds(self, n, r_lo, r_hi, c_lo, c_hi) -> tuple[np.ndarray, np.ndarray]:
        """(K,) float64 least and greatest prototype values of maps n over the spans."""
        if (r_hi - r_lo).max(initial=0) > 2 or (c_hi - c_lo).max(initial=0) > 2:
            raise ValueError(f"upsampling by {self.f} must span at most three source rows and columns per cell")
        return _span_bounds(self.src, n, r_lo, r_hi, c_lo, c_hi)


@functools.lru_cache(maxsize=64)
def upsampling_matches_torch(mh: int, mw: int, f: int) -> bool:
    """Whether `Upsampled` gives exactly what this machine's `F.interpolate` gives for (mh, mw) maps and factor f."""
    import torch
    import torch.nn.functional as F

    rng = np.random.default_rng(mh * 7919 + mw * 31 + f)
    maps = rng.normal(0, 4, (2, mh, mw)).astype(np.float32)
    maps[1] = np.round(maps[1] * 8) / 8  # short mantissas: products exact, sums on midpoints
    ref = F.interpolate(torch.from_numpy(maps)[None], scale_factor=f, mode="bilinear")[0].numpy()
    taps = (upsample_taps(mh, f), upsample_taps(mw, f))
    rows, cols = (a.ravel() for a in np.meshgrid(np.arange(f * mh), np.arange(f * mw), indexing="ij"))
    up = Upsampled(maps, f, (0, f * mh, 0, f * mw), taps)
    return all(np.array_equal(up.points(np.full(rows.size, i), rows, cols), ref[i].ravel()) for i in range(len(maps)))
