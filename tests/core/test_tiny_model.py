"""The shipped small model really finds objects: held-out synthetic scenes, never seen in training."""

import numpy as np
import pytest

from fastsam_core import TINY_CHECKPOINT, FastSAMModel, Segmenter
from fastsam_core.testing.synthetic import make_scene


@pytest.fixture(scope="module")
def segmenter():
    model = FastSAMModel.load(TINY_CHECKPOINT, device="cpu")
    assert model.name == "fastsam-tiny.pt" and model.default_imgsz == 160
    return Segmenter(model)


@pytest.mark.parametrize(("h", "w"), [(160, 160), (240, 320), (480, 360)])
def test_finds_held_out_shapes(segmenter, h, w):
    rng = np.random.default_rng(10_000 + h)  # training used seed 0
    found = total = 0
    for _ in range(12):
        img, shapes = make_scene(rng, h, w)
        masks = segmenter([img])[0].masks()
        for s in shapes:
            total += 1
            if len(masks):
                inter = (masks & s.mask).reshape(len(masks), -1).sum(1)
                union = (masks | s.mask).reshape(len(masks), -1).sum(1)
                found += (inter / union).max() >= 0.5
    assert found / total >= 0.8, f"found {found} of {total} shapes"


def test_blank_image_gives_no_masks(segmenter):
    assert len(segmenter([np.full((160, 160, 3), 128, np.uint8)])[0]) == 0
