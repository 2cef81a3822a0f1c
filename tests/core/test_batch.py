from contextlib import nullcontext as does_not_raise

import numpy as np
import pytest

from fastsam_core import MaskBatch
from tests.support.helpers import batch_from_masks


def _masks(n, h=12, w=10):
    out = []
    for i in range(n):
        m = np.zeros((h, w), bool)
        m[i : i + 3, i : i + 2] = True
        out.append(m)
    return out


@pytest.mark.parametrize(
    ("change", "expectation"),
    [
        ({}, does_not_raise()),
        ({"boxes_xyxy": np.zeros((3, 4))}, pytest.raises(ValueError, match=r"boxes_xyxy must have shape \(4, 4\)")),
        ({"boxes_xyxy": np.zeros((4,))}, pytest.raises(ValueError, match="boxes_xyxy")),
        ({"scores": np.zeros(5)}, pytest.raises(ValueError, match=r"scores must have shape \(4,\), but got shape")),
        ({"mask_ids": np.zeros((4, 1))}, pytest.raises(ValueError, match="mask_ids")),
        ({"columns": {"x": np.zeros(3)}}, pytest.raises(ValueError, match="column 'x' must have 4 rows")),
        ({"image_hw": (11, 10)}, pytest.raises(ValueError, match=r"size \[11, 10\]")),
    ],
)
def test_validation(change, expectation):
    b = batch_from_masks(_masks(4))
    fields = {k: getattr(b, k) for k in ("image_hw", "boxes_xyxy", "scores", "rles", "areas", "stability", "mask_ids")}
    with expectation:
        MaskBatch(**{**fields, **change})


def test_indexing_returns_new_batches_and_keeps_ids():
    b = batch_from_masks(_masks(5)).with_columns(x=np.arange(5) * 10)
    sub = b[b.scores < 0.8]
    assert list(sub.mask_ids) == [2, 3, 4]
    assert list(sub.columns["x"]) == [20, 30, 40]
    assert len(b) == 5  # the original is untouched
    assert list(b[1].mask_ids) == [1]
    assert list(b[::2].mask_ids) == [0, 2, 4]
    assert list(sub.by_mask_id([4, 2]).mask_ids) == [4, 2]
    with pytest.raises(KeyError, match="mask_id 0"):
        sub.by_mask_id([0])
    assert np.array_equal(sub.masks(), np.stack(_masks(5))[2:])


def test_cat_and_empty():
    b = batch_from_masks(_masks(4))
    c = MaskBatch.cat([b[:1], b[1:]])
    assert list(c.mask_ids) == [0, 1, 2, 3]
    assert [r["counts"] for r in c.rles] == [r["counts"] for r in b.rles]
    e = MaskBatch.empty((12, 10))
    assert len(e) == 0 and e.boxes_xyxy.shape == (0, 4) and e.masks().shape == (0, 12, 10)
    assert len(MaskBatch.cat([e, b])) == 4
    with pytest.raises(ValueError, match="image_hw"):
        MaskBatch.cat([b, MaskBatch.empty((5, 5))])
    with pytest.raises(ValueError, match="columns"):
        MaskBatch.cat([b, b.with_columns(y=np.zeros(4))])
