import numpy as np
import pycocotools.mask as mask_utils
import pytest
import torch

from fastsam_core import rle


def _ref(m: np.ndarray) -> dict:
    return mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))


def _cases():
    rng = np.random.default_rng(0)
    yield "empty", np.zeros((7, 5), bool)
    yield "full", np.ones((7, 5), bool)
    one = np.zeros((9, 11), bool)
    one[4, 6] = True
    yield "one pixel", one
    first = np.zeros((4, 4), bool)
    first[0, 0] = True
    yield "first pixel", first
    last = np.zeros((4, 4), bool)
    last[-1, -1] = True
    yield "last pixel", last
    yield "1x1 on", np.ones((1, 1), bool)
    yield "1x1 off", np.zeros((1, 1), bool)
    yield "single row", rng.random((1, 37)) > 0.5
    yield "single column", rng.random((41, 1)) > 0.5
    yield "odd random", rng.random((31, 17)) > 0.5
    yield "sparse random", rng.random((64, 48)) > 0.97
    tall = np.zeros((50, 6), bool)
    tall[:, 2:4] = True  # full-height columns: a run crosses a column boundary
    yield "full-height band", tall
    big = np.zeros((300, 257), bool)
    big[10:290, 5:250] = True
    yield "large runs", big
    yield "long runs", np.ones((1000, 3000), bool) & (np.arange(3000) > 17)


@pytest.mark.parametrize(("name", "mask"), list(_cases()), ids=[c[0] for c in _cases()])
def test_encode_matches_pycocotools_and_roundtrips(name, mask):
    ours = rle.encode(torch.from_numpy(mask))[0]
    ref = _ref(mask)
    assert ours["counts"] == ref["counts"]
    assert ours["size"] == list(ref["size"])
    assert np.array_equal(rle.decode(ours).astype(bool), mask)
    assert rle.area(ours) == int(mask.sum()) == int(mask_utils.area(ref))
    assert np.allclose(rle.bbox_xywh([ours])[0], mask_utils.toBbox(ref))


def test_batch_encode_random_masks():
    rng = np.random.default_rng(1)
    masks = rng.random((20, 33, 29)) > rng.random((20, 1, 1))
    ours = rle.encode(masks)
    ref = mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))
    assert [r["counts"] for r in ours] == [r["counts"] for r in ref]


def test_string_codec_roundtrip_with_large_and_deltas():
    rng = np.random.default_rng(2)
    for _ in range(50):
        counts = rng.integers(0, 2**31 // 64, size=rng.integers(1, 40))
        s = rle.counts_to_string(counts)
        assert np.array_equal(rle.string_to_counts(s), counts)
    # pycocotools parses our strings the same way
    counts = np.array([5, 1, 2_000_000, 3, 0, 7])
    h, w = 1, int(counts.sum())
    ours = {"size": [h, w], "counts": rle.counts_to_string(counts)}
    assert mask_utils.area(ours) == counts[1::2].sum()
    assert rle.string_to_counts(rle.counts_to_string(np.zeros(0, np.int64))).size == 0


@pytest.mark.parametrize("origin", [(0, 0), (3, 4), (10, 0), (0, 9)])
def test_windows_equal_whole_masks(origin):
    rng = np.random.default_rng(3)
    h, w = 24, 19
    y0, x0 = origin
    win = torch.from_numpy(rng.random((h - y0 - 2 if y0 else h, w - x0 - 1 if x0 else w)) > 0.4)
    full = np.zeros((h, w), bool)
    full[y0 : y0 + win.shape[0], x0 : x0 + win.shape[1]] = win.numpy()
    ours = rle.encode_windows([win, torch.zeros(0, 3, dtype=torch.bool)], [origin, (1, 1)], (h, w))
    assert ours[0]["counts"] == _ref(full)["counts"]
    assert ours[1]["counts"] == _ref(np.zeros((h, w), bool))["counts"]


def test_window_outside_image_is_refused():
    with pytest.raises(ValueError, match="inside the image"):
        rle.encode_windows([torch.ones(3, 3)], [(5, 5)], (6, 6))


def test_decode_window_and_points():
    rng = np.random.default_rng(4)
    m = rng.random((30, 40)) > 0.5
    r = rle.encode(m)[0]
    assert np.array_equal(rle.decode_window(r, (5, 7, 31, 29)), m[7:29, 5:31])
    assert np.array_equal(rle.decode_window(r, (0, 0, 40, 30)), m)
    pts = np.array([[x, y] for y in range(30) for x in range(40)])
    assert np.array_equal(rle.contains_points(r, pts), m[pts[:, 1], pts[:, 0]])
    assert not rle.contains_points(r, np.array([[-1, 0], [40, 0], [0, 30], [0, -1]])).any()


def test_many_masks_compress_in_one_pass_as_each_alone():
    import pycocotools.mask as mask_utils

    from fastsam_core.rle import counts_to_strings, string_to_counts

    rng = np.random.default_rng(11)
    masks = [rng.random((int(rng.integers(1, 40)), int(rng.integers(1, 40)))) > rng.random() for _ in range(50)]
    masks += [np.zeros((3, 5), bool), np.ones((7, 2), bool)]
    refs = [mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))["counts"] for m in masks]
    counts = [string_to_counts(r) for r in refs]
    assert counts_to_strings(counts) == refs
    assert counts_to_strings([]) == [] and counts_to_strings([np.zeros(0, np.int64), counts[0]]) == [b"", refs[0]]
