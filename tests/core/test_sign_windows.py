"""Windows evaluated only where a threshold can be crossed give the dense path's bits, masks and stability alike."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fastsam_core import EverythingParams, FastSAMModel, Segmenter, sign_windows
from fastsam_core.everything import _take
from fastsam_core.grids import Plain
from fastsam_core.resample import axis_taps, resize_window
from fastsam_core.rle import window_counts
from fastsam_core.testing.synthetic import make_scene


def _source(rng, hs: int, ws: int, kind: str) -> torch.Tensor:
    if kind == "smooth":  # what a network's mask logits look like: broad blobs, steep edges
        coarse = torch.from_numpy(rng.normal(0, 6, (1, 1, max(hs // 8, 2), max(ws // 8, 2))).astype(np.float32))
        return F.interpolate(coarse, size=(hs, ws), mode="bilinear")[0, 0].contiguous()
    if kind == "noise":  # every cell straddles something
        return torch.from_numpy(rng.normal(0, 3, (hs, ws)).astype(np.float32))
    if kind == "ties":  # values exactly at the thresholds, and just beside them
        vals = np.array([0.0, 1.0, -1.0, np.nextafter(1, 2), np.nextafter(-1, -2), 1e-38, -1e-38, 5.0], np.float32)
        return torch.from_numpy(rng.choice(vals, (hs, ws)))
    return torch.full((hs, ws), {"flat_pos": 3.0, "flat_neg": -3.0}[kind])


@pytest.mark.parametrize("kind", ["smooth", "noise", "ties", "flat_pos", "flat_neg"])
def test_windows_equal_the_dense_resize_thresholded(kind):
    rng = np.random.default_rng(sum(map(ord, kind)))
    computed = total = 0
    for _ in range(40):
        hs, ws = (int(v) for v in rng.integers(1, 120, 2))
        h, w = (max(int(v * rng.uniform(0.3, 25)), 1) for v in (hs, ws))
        n = int(rng.integers(1, 6))
        src = torch.stack([_source(rng, hs, ws, kind) for _ in range(n)])
        rows, cols = axis_taps(hs, h, 0, h), axis_taps(ws, w, 0, w)
        boxes = []
        for _ in range(n):  # some empty, some the whole image
            y0, y1 = sorted(int(v) for v in rng.integers(0, h + 1, 2))
            x0, x1 = sorted(int(v) for v in rng.integers(0, w + 1, 2))
            boxes.append((x0, y0, x1, y1) if rng.random() > 0.15 else (0, 0, w, h))
        offset = float(rng.choice([1.0, 0.3, 2.5]))
        rt, ct = sign_windows.numpy_taps(rows), sign_windows.numpy_taps(cols)
        grid = Plain(src.numpy())
        cells = grid.axis_cells(rt.i0, rt.i1, 0), grid.axis_cells(ct.i0, ct.i1, 1)
        got = sign_windows.windows(grid, rt, ct, *cells, np.array(boxes, np.int64), offset, (h, w))
        for i, (x0, y0, x1, y1) in enumerate(boxes):
            dense = resize_window(src[i], _take(rows, y0, y1), _take(cols, x0, x1))
            (expected,) = window_counts([dense > 0], [(y0, x0)], (h, w))
            np.testing.assert_array_equal(got.counts[i], expected)
            assert (got.above[i], got.union[i]) == (int((dense > offset).sum()), int((dense > -offset).sum()))
            total += dense.numel()
        computed += got.computed
    if kind.startswith("flat"):
        assert computed == 0  # nothing near a threshold: no pixel is computed
    if kind == "smooth":
        assert computed < 0.5 * total


@pytest.mark.parametrize(
    "sizes",
    [[(480, 640)], [(333, 251)], [(1000, 1333)], [(400, 600)], [(240, 320), (150, 410)], [(1, 500)], [(700, 2)]],
    ids=["4:3", "odd", "f>1", "3:2", "mixed", "a row", "a column"],
)
def test_the_segmenter_gives_the_dense_paths_bits(random_checkpoint, sizes):
    model = FastSAMModel.load(random_checkpoint, allow_unpinned=True, device="cpu")
    params = EverythingParams(imgsz=320, conf=0.2, iou=0.9, max_det=300, chunk_pixels=200_000)
    rng = np.random.default_rng(len(sizes) + sizes[0][0])
    images = [make_scene(rng, h, w, n_shapes=(3, 9))[0] for h, w in sizes]
    dense = Segmenter(model, params, dense_windows=True)(images)
    sign = Segmenter(model, params, dense_windows=False)(images)
    assert Segmenter(model, params).dense_windows is None  # the default picks by device: CPU -> sign windows
    for a, b in zip(dense, sign, strict=True):
        assert [r["counts"] for r in a.rles] == [r["counts"] for r in b.rles]
        assert np.array_equal(a.stability, b.stability) and np.array_equal(a.areas, b.areas)
        assert np.array_equal(a.boxes_xyxy, b.boxes_xyxy) and np.array_equal(a.scores, b.scores)
    assert min(len(b) for b in sign) >= 100  # hundreds of masks, of every size, on every image


def _nearest_float32(exact) -> np.float32:
    """The float32 nearest a Fraction, ties to even."""
    from fractions import Fraction

    guess = np.float32(float(exact))
    cands = [guess, np.nextafter(guess, np.float32(np.inf)), np.nextafter(guess, np.float32(-np.inf))]
    even = lambda v: int(np.frombuffer(v.tobytes(), np.uint32)[0]) & 1  # noqa: E731
    return min(cands, key=lambda v: (abs(Fraction(float(v)) - exact), even(v)))


def test_fma32_rounds_once():
    from fractions import Fraction

    from fastsam_core.grids import fma32

    f32 = np.float32
    # 3 * (1 + 2**-23) lies exactly between two float32 neighbours; a tiny c decides which one is nearest,
    # and rounding through float64 would lose it (and round to even instead).
    mid_a, mid_b = f32(3), f32(1 + 2.0**-23)
    lower, upper = f32(3 + 2.0**-22), f32(3 + 2.0**-21)
    assert fma32(np.array([mid_a]), np.array([mid_b]), np.array([f32(-(2.0**-80))]))[0] == lower
    assert fma32(np.array([mid_a]), np.array([mid_b]), np.array([f32(2.0**-80)]))[0] == upper
    assert fma32(np.array([mid_a]), np.array([mid_b]), np.array([f32(0)]))[0] == upper  # a true tie: to even
    rng = np.random.default_rng(5)
    a = rng.normal(0, 4, 3000).astype(f32)
    b = rng.choice(np.array([0.125, 0.375, 0.625, 0.875, 0.25, 0.75, 1.0, 0.0], f32), 3000)
    c = (rng.normal(0, 4, 3000) * rng.choice([1.0, 2.0**-30], 3000)).astype(f32)
    got = fma32(a, b, c)
    exact = [Fraction(float(x)) * Fraction(float(y)) + Fraction(float(z)) for x, y, z in zip(a, b, c, strict=True)]
    want = [_nearest_float32(e) for e in exact]
    np.testing.assert_array_equal(got, np.array(want, f32))


@pytest.mark.parametrize("shape", [(176, 256, 4), (256, 176, 2), (192, 256, 2), (24, 40, 4)])
def test_upsampled_grids_give_torchs_values_where_read(shape):
    from fastsam_core import grids

    mh, mw, f = shape
    assert grids.upsampling_matches_torch(mh, mw, f)  # this machine's kernel fuses as emulated
    rng = np.random.default_rng(mh + f)
    logits = rng.normal(0, 5, (mh, mw)).astype(np.float32)
    full = F.interpolate(torch.from_numpy(logits)[None, None], scale_factor=f, mode="bilinear")[0, 0].numpy()
    top, left = int(rng.integers(0, 3 * f)), int(rng.integers(0, 3 * f))
    crop = (top, f * mh - int(rng.integers(0, 3 * f)), left, f * mw - int(rng.integers(0, 3 * f)))
    up = grids.Upsampled(logits[None], f, crop, (grids.upsample_taps(mh, f), grids.upsample_taps(mw, f)))
    r = rng.integers(0, up.shape[0], 5000)
    c = rng.integers(0, up.shape[1], 5000)
    np.testing.assert_array_equal(up.points(np.zeros(5000, np.int64), r, c), full[top + r, left + c])
    rows, cols = np.arange(0, up.shape[0] - 1), np.arange(0, up.shape[1] - 1)
    cells_r = up.axis_cells(rows, rows + 1, 0)  # cells of an upsampled axis: spans of prototype values
    cells_c = up.axis_cells(cols, cols + 1, 1)
    assert cells_r.start.size - 1 < rows.size and (cells_r.hi - cells_r.lo).max() <= 2
    gr = np.searchsorted(cells_r.start, rows, side="right") - 1
    gc = np.searchsorted(cells_c.start, cols, side="right") - 1
    n = np.zeros(rows.size * cols.size, np.int64)
    R, C = (g.ravel() for g in np.meshgrid(gr, gc, indexing="ij"))
    lo, hi = (b.reshape(rows.size, cols.size) for b in up.bounds(n, cells_r.lo[R], cells_r.hi[R], cells_c.lo[C],
                                                                    cells_c.hi[C]))  # fmt: skip
    corners = np.stack([full[top + rows][:, left + cols], full[top + rows + 1][:, left + cols],
                        full[top + rows][:, left + cols + 1], full[top + rows + 1][:, left + cols + 1]])  # fmt: skip
    slack = 1e-5 * np.abs(corners).max()  # the upsampled values' own rounding (the windows' margin covers it)
    assert (lo <= corners.min(0) + slack).all() and (hi >= corners.max(0) - slack).all()
