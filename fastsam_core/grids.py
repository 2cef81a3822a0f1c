"""What a mask window is resampled from: a plain array, or logits upsampled by 2 or 4, computed only where read.

Retina masks whose letterbox padding is not a whole number of prototype pixels are first upsampled
by an integer factor f (`F.interpolate(..., scale_factor=f, mode="bilinear")`, as ultralytics does),
then resized to the image. Upsampling every mask's whole map costs f**2 times its prototype pixels
per mask; a window only reads the upsampled values at the corners of its cells. `Upsampled` gives
those values alone, bit for bit what torch's CPU kernel writes: per output value, two fused
multiply-adds along the width, then one along the height (`fma(a, w0, b * w1)`), with the kernel's
float32 weights (exact for f = 2 and 4). The fused multiply-add is emulated exactly in float64
(`fma32`). Whether this machine's kernel computes that way is checked once per map shape against
`F.interpolate` itself (`upsampling_matches_torch`); where it does not, callers upsample with torch.

Shapes: a grid is (Hs, Ws); `points(r, c)` is (N,) float32 at N (row, column) pairs; `bounds(rows, cols)` is
(R, C) float64 least and greatest values over each cell's four corners.
"""

from __future__ import annotations

import functools

import numpy as np


class Plain:
    """An (Hs, Ws) float32 array as a grid."""

    def __init__(self, src: np.ndarray):
        self.src = src
        self.shape = src.shape

    def points(self, r: np.ndarray, c: np.ndarray) -> np.ndarray:
        """(N,) float32: src[r[i], c[i]]."""
        return self.src[r, c]

    def bounds(self, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(R, C) float64 least and greatest of the four corners of cells (rows[k], cols[m]) (see `_corner_bounds`)."""
        return _corner_bounds(self.src, rows, cols)


def _corner_bounds(src: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least and greatest of src over rows {r, r + 1} x cols {c, c + 1} (clipped at the edge), per (r, c) pair."""
    hs, ws = src.shape
    return _span_bounds(src, rows, np.minimum(rows + 1, hs - 1), cols, np.minimum(cols + 1, ws - 1))


def _span_bounds(src, r_lo, r_hi, c_lo, c_hi) -> tuple[np.ndarray, np.ndarray]:
    """(R, C) float64 least and greatest of src over rows r_lo..r_hi x cols c_lo..c_hi (spans of at most 3).

    Separable, and each distinct span computed once (neighbouring cells of an upsampled map share them).
    """
    rs, r_of = _runs(r_lo, r_hi)
    cs, c_of = _runs(c_lo, c_hi)
    ca, cb = int(cs[0].min()), int(cs[1].max()) + 1
    sub = src[:, ca:cb]
    rows = [sub[rs[0]], sub[np.minimum(rs[0] + 1, rs[1])], sub[rs[1]]]  # (R', W') each
    cols = [cs[0] - ca, np.minimum(cs[0] + 1, cs[1]) - ca, cs[1] - ca]
    out = []
    for reduce in (np.minimum, np.maximum):
        along = reduce(reduce(rows[0], rows[1]), rows[2])
        across = reduce(reduce(along[:, cols[0]], along[:, cols[1]]), along[:, cols[2]])  # (R', C')
        out.append(across[r_of[:, None], c_of].astype(np.float64))
    return out[0], out[1]


def _runs(lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(the (2, K) spans with neighbours' repeats merged, the index of each input's span)."""
    new = np.ones(lo.size, bool)
    new[1:] = (lo[1:] != lo[:-1]) | (hi[1:] != hi[:-1])
    return np.stack([lo[new], hi[new]]), np.cumsum(new) - 1


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
    """An (mh, mw) float32 map upsampled by f, cropped to [top:bottom, left:right], computed where read.

    Args:
        src: (mh, mw) float32 logits of one mask.
        f: 2 or 4.
        crop: (top, bottom, left, right) in upsampled pixels.
        taps: `upsample_taps` for the rows and the columns (shared by every mask of an image).
    """

    def __init__(self, src: np.ndarray, f: int, crop: tuple[int, int, int, int], taps: tuple[tuple, tuple]):
        self.src, self.f = src, f
        self.top, bottom, self.left, right = crop
        self.shape = (bottom - self.top, right - self.left)
        self.rows, self.cols = taps

    def points(self, r: np.ndarray, c: np.ndarray) -> np.ndarray:
        """(N,) float32: the upsampled map at rows top + r[i] and columns left + c[i]."""
        ri0, ri1, rw0, rw1 = (t[self.top + r] for t in self.rows)
        ci0, ci1, cw0, cw1 = (t[self.left + c] for t in self.cols)
        s = self.src
        upper = fma32(s[ri0, ci0], cw0, s[ri0, ci1] * cw1)  # along the width first, as torch's kernel
        lower = fma32(s[ri1, ci0], cw0, s[ri1, ci1] * cw1)
        return fma32(upper, rw0, lower * rw1)

    def bounds(self, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(R, C) float64 bounds of the four corners of cells (rows[k], cols[m]) of the upsampled map.

        An upsampled value is a convex combination of the 2 x 2 source values under it (with float
        error of a few units in the last place, which the caller's margin covers), so a cell's
        corners lie within the source values from the first tap of its first row to the second
        tap of its next row (a span of at most three source rows for f >= 2), and the same across.
        """
        hu, wu = self.shape
        r_lo = self.rows[0][self.top + rows]
        r_hi = self.rows[1][self.top + np.minimum(rows + 1, hu - 1)]
        c_lo = self.cols[0][self.left + cols]
        c_hi = self.cols[1][self.left + np.minimum(cols + 1, wu - 1)]
        if (r_hi - r_lo).max(initial=0) > 2 or (c_hi - c_lo).max(initial=0) > 2:
            raise ValueError(f"upsampling by {self.f} must span at most three source rows and columns per cell")
        return _span_bounds(self.src, r_lo, r_hi, c_lo, c_hi)


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
    return all(
        np.array_equal(Upsampled(m, f, (0, f * mh, 0, f * mw), taps).points(rows, cols), r.ravel())
        for m, r in zip(maps, ref, strict=True)
    )
