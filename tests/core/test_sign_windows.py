"""Windows evaluated only where a threshold can be crossed give the dense path's bits, masks and stability alike."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fastsam_core import EverythingParams, FastSAMModel, Segmenter, sign_windows
from fastsam_core.everything import _take
from fastsam_core.resample import axis_taps, resize_window
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
def test_a_window_equals_the_dense_resize_thresholded(kind):
    rng = np.random.default_rng(sum(map(ord, kind)))
    computed = total = 0
    for _ in range(60):
        hs, ws = (int(v) for v in rng.integers(1, 120, 2))
        h, w = (max(int(v * rng.uniform(0.3, 25)), 1) for v in (hs, ws))
        src = _source(rng, hs, ws, kind)
        rows, cols = axis_taps(hs, h, 0, h), axis_taps(ws, w, 0, w)
        y0, y1 = sorted(int(v) for v in rng.integers(0, h + 1, 2))
        x0, x1 = sorted(int(v) for v in rng.integers(0, w + 1, 2))
        offset = float(rng.choice([1.0, 0.3, 2.5]))
        dense = resize_window(src, _take(rows, y0, y1), _take(cols, x0, x1))
        got = sign_windows.window(
            src.numpy(), sign_windows.numpy_taps(rows), sign_windows.numpy_taps(cols), y0, y1, x0, x1, offset
        )
        assert got.binary.shape == tuple(dense.shape)
        assert np.array_equal(got.binary, (dense > 0).numpy())
        assert (got.above, got.union) == (int((dense > offset).sum()), int((dense > -offset).sum()))
        computed, total = computed + got.computed, total + dense.numel()
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
