import numpy as np
import pytest

from fastsam_core import (
    NO_MASK,
    ColorWordEmbedder,
    best_mask_per_prompt,
    label_instances,
    merge_by_points,
    score_masks,
    select_by_boxes,
    select_by_points,
    with_labels,
)
from fastsam_core import rle as rle_utils
from fastsam_core.batch import MaskBatch
from fastsam_core.scoring import score_images, scored_rows
from fastsam_core.testing.synthetic import PALETTE
from tests.support.helpers import batch_from_masks

H, W = 40, 60


def _rect(x0, y0, x1, y1):
    m = np.zeros((H, W), bool)
    m[y0:y1, x0:x1] = True
    return m


# mask 0: big rectangle; mask 1: small one inside it; mask 2: separate one on the right
MASKS = [_rect(2, 2, 30, 30), _rect(10, 10, 16, 16), _rect(40, 5, 55, 20)]


@pytest.mark.parametrize(
    ("points", "labels", "expected_ids"),
    [
        ([[12, 12]], [1], [0, 1]),  # inside both nested masks
        ([[5, 5]], [1], [0]),
        ([[45, 10]], None, [2]),  # labels default to foreground
        ([[12, 12]], [0], []),  # only a background point selects nothing
        ([[12, 12], [5, 5]], [1, 0], [1]),  # minus those holding a background point
        ([[12, 12], [45, 10]], [1, 1], [0, 1, 2]),
        ([[35, 35]], [1], []),  # in no mask
        ([[-5, 3]], [1], []),  # outside the image: empty, not an error
        ([[60, 40]], [1], []),  # just past the last pixel
        ([[29.9, 29.9]], [1], [0]),  # sub-pixel coordinates fall in their pixel
        (np.zeros((0, 2)), None, []),
    ],
)
def test_point_selection(points, labels, expected_ids):
    b = batch_from_masks(MASKS)
    assert list(select_by_points(b, np.array(points), labels).mask_ids) == expected_ids


def test_point_labels_are_checked():
    b = batch_from_masks(MASKS)
    with pytest.raises(ValueError, match=r"labels must have shape \(1,\)"):
        select_by_points(b, np.array([[1, 1]]), [1, 0])
    with pytest.raises(ValueError, match="1 \\(foreground\\) or 0"):
        select_by_points(b, np.array([[1, 1]]), [2])


def test_point_merge_uses_fastsam_morphology():
    b = batch_from_masks(MASKS)
    merged = rle_utils.decode(merge_by_points(b, np.array([[5, 5], [45, 10]]), morphology=False)).astype(bool)
    assert np.array_equal(merged, MASKS[0] | MASKS[2])
    # a background point inside the nested small mask is inside the big one too: nothing is left
    assert not rle_utils.decode(merge_by_points(b, np.array([[5, 5], [12, 12]]), [1, 0], morphology=False)).any()
    corner = _rect(25, 20, 38, 35)  # overlaps the big mask's corner; the point (35, 32) is only in it
    b3 = batch_from_masks([*MASKS, corner])
    pts = np.array([[5, 5], [35, 32]])
    minus = rle_utils.decode(merge_by_points(b3, pts, [1, 0], morphology=False)).astype(bool)
    assert np.array_equal(minus, MASKS[0] & ~corner)
    # opening with an 8x8 kernel removes parts thinner than 8 px: the 6x6 hole's ring stays, a 3 px strip goes
    strip = np.zeros((H, W), bool)
    strip[30:33, 35:58] = True
    b2 = batch_from_masks([MASKS[0], strip])
    smooth = rle_utils.decode(merge_by_points(b2, np.array([[5, 5], [40, 31]]))).astype(bool)
    assert smooth[5, 5] and not smooth[31, 40]
    empty = rle_utils.decode(merge_by_points(b, np.array([[35, 35]])))
    assert empty.shape == (H, W) and not empty.any()


@pytest.mark.parametrize(
    ("boxes", "expected"),
    [
        ([[2, 2, 30, 30]], [0]),
        ([[10, 10, 16, 16]], [1]),
        ([[41, 6, 54, 19]], [2]),
        ([[41, 6, 54, 19], [2, 2, 30, 30], [9, 9, 17, 17]], [2, 0, 1]),  # order kept, one answer per box
        ([[-20, -20, 31, 31]], [0]),  # clipped to the image first
        ([[35, 25, 39, 39]], [NO_MASK]),  # overlaps nothing
        ([[70, 50, 90, 60]], [NO_MASK]),  # entirely outside: empty after clipping
        ([[20, 20, 20, 30]], [NO_MASK]),  # zero area
        (np.zeros((0, 4)), []),
    ],
)
def test_box_selection(boxes, expected):
    assert list(select_by_boxes(batch_from_masks(MASKS), np.array(boxes))) == expected


def _color_scene():
    """Five shapes with known colours on a grey image; masks in a fixed order."""
    img = np.full((H, W, 3), 128, np.uint8)
    spec = [("blue", (2, 2, 14, 14)), ("red", (20, 2, 32, 14)), ("green", (40, 2, 52, 14)),
            ("red", (2, 22, 14, 34)), ("yellow", (40, 22, 52, 34))]  # fmt: skip
    masks = []
    for color, box in spec:
        m = _rect(*box)
        img[m] = PALETTE[color]
        masks.append(m)
    tiny = _rect(25, 30, 28, 33)  # 9 px: below the area limit, never scored
    img[tiny] = PALETTE["red"]
    return img, [*(c for c, _ in spec), "red"], [*masks, tiny]


def test_text_picks_the_right_mask_per_prompt():
    img, _, masks = _color_scene()
    b = score_masks(img, batch_from_masks(masks), ColorWordEmbedder(), ["a green square", "blue", "yellow thing"])
    assert list(best_mask_per_prompt(b, 3)) == [2, 0, 4]
    assert np.isnan(b.columns["clip_cosine"][5]).all()  # the 9 px mask was skipped
    assert np.allclose(np.nansum(b.columns["clip_prob"], 1)[:5], 1.0)


def test_filtering_before_text_selection_does_not_shift_ids():
    img, _, masks = _color_scene()
    b = batch_from_masks(masks)
    kept = b[np.array([False, True, True, False, True, True])]  # drop the blue and the second red
    scored = score_masks(img, kept, ColorWordEmbedder(), ["red", "yellow", "green"])
    assert list(best_mask_per_prompt(scored, 3)) == [1, 4, 2]
    # and selecting by id gives back the mask that really is yellow
    yellow = scored.by_mask_id([4]).masks()[0]
    assert np.array_equal(yellow, masks[4])


def test_all_instances_labels_every_red_shape_and_respects_negatives():
    img, _, masks = _color_scene()
    b = score_masks(img, batch_from_masks(masks), ColorWordEmbedder(), ["red", "blue"])
    # green and yellow match neither prompt: their probability is the uniform 0.5, below the threshold
    lab = label_instances(b, 2, threshold=0.6)
    assert list(lab.label) == [1, 0, NO_MASK, 0, NO_MASK, NO_MASK]  # both red squares; unscored tiny one stays out
    assert np.all(lab.score[[0, 1, 3]] >= 0.6) and np.isnan(lab.score[[2, 4, 5]]).all()
    # a negative prompt that matches as well as the positive one vetoes it
    b2 = score_masks(img, batch_from_masks(masks), ColorWordEmbedder(), ["red", "blue"], negatives=["red"])
    assert list(label_instances(b2, 2, threshold=0.0).label) == [1, NO_MASK, NO_MASK, NO_MASK, NO_MASK, NO_MASK]
    with pytest.raises(ValueError, match="threshold"):
        label_instances(b, 2, threshold=1.5)


def test_no_scored_masks_gives_no_answer():
    img, _, masks = _color_scene()
    b = score_masks(img, batch_from_masks(masks[-1:]), ColorWordEmbedder(), ["red"])
    assert list(best_mask_per_prompt(b, 1)) == [NO_MASK]
    assert list(label_instances(b, 1).label) == [NO_MASK]


def test_crops_of_several_images_stream_through_one_embedder_call():
    """score_images == score_masks per image, with one embed_images call for all the crops."""
    img, _, masks = _color_scene()
    other = img[:, ::-1].copy()
    b1, b2 = batch_from_masks(masks), batch_from_masks([m[:, ::-1] for m in masks[:3]])
    calls = []

    class Counting(ColorWordEmbedder):
        def embed_images(self, crops):
            out = super().embed_images(crops)
            calls.append(len(out))
            return out

    emb = Counting()
    joint = score_images([img, other], [b1, b2], emb, ["red", "blue"], negatives=["green"])
    assert calls == [5 + 3]  # the 9 px mask is not scored
    for got, (im, b) in zip(joint, [(img, b1), (other, b2)], strict=True):
        alone = score_masks(im, b, ColorWordEmbedder(), ["red", "blue"], negatives=["green"])
        for name in ("clip_cosine", "clip_prob"):
            assert np.array_equal(got.columns[name], alone.columns[name], equal_nan=True)


def test_max_masks_scores_the_best_masks_by_score_times_stability():
    img, _, masks = _color_scene()
    b = batch_from_masks(masks)
    b = MaskBatch(
        b.image_hw, b.boxes_xyxy, np.array([0.9, 0.5, 0.8, 0.95, 0.3, 1.0], np.float32), b.rles, b.areas,
        np.array([1.0, 1.0, 0.5, 0.9, 1.0, 1.0], np.float32), b.mask_ids,
    )  # fmt: skip
    # score x stability: 0.9, 0.5, 0.4, 0.855, 0.3 (and the 9 px mask, never scored: 1.0)
    assert list(scored_rows(b, min_area=100, max_masks=2)) == [0, 3]
    scored = with_labels(score_masks(img, b, ColorWordEmbedder(), ["red", "blue"], max_masks=2), 2, "instances", 0.5)
    cos = scored.columns["clip_cosine"]
    assert [not np.isnan(row).any() for row in cos] == [True, False, False, True, False, False]
    assert list(scored.columns["label"]) == [1, NO_MASK, NO_MASK, 0, NO_MASK, NO_MASK]  # blue, -, -, red
    assert list(scored_rows(b, min_area=100, max_masks=None)) == [0, 1, 2, 3, 4]


def test_best_mode_labels_one_mask_per_prompt():
    img, _, masks = _color_scene()
    b = score_masks(img, batch_from_masks(masks), ColorWordEmbedder(), ["red", "yellow", "purple"])
    labelled = with_labels(b, 3, "best")
    label = labelled.columns["label"]
    # red: mask 1 (two red squares tie; the first wins); yellow: mask 4; purple is in no mask, every
    # cosine is 0, so FastSAM's argmax answers with the first scored mask (0).
    assert list(label) == [2, 0, NO_MASK, NO_MASK, 1, NO_MASK]
    assert np.array_equal(np.isnan(labelled.columns["label_score"]), label == NO_MASK)
    none = with_labels(b, 3, "none")
    assert (none.columns["label"] == NO_MASK).all() and np.isnan(none.columns["label_score"]).all()
    with pytest.raises(ValueError, match="mode must be one of"):
        with_labels(b, 3, "most")
