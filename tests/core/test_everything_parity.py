"""Everything mode here against ultralytics' own FastSAM predictor, on identical weights and images."""

import numpy as np
import pytest
import torch

from fastsam_core import TINY_CHECKPOINT, EverythingParams, FastSAMModel, Segmenter
from fastsam_core.testing.synthetic import make_scene


def _ultralytics(path, images, params):
    from ultralytics import FastSAM
    from ultralytics.utils.ops import scale_masks

    results = FastSAM(str(path)).predict(
        [im[..., ::-1].copy() for im in images],  # ultralytics takes BGR
        imgsz=params.imgsz, conf=params.conf, iou=params.iou, max_det=params.max_det,
        retina_masks=params.retina, device="cpu", verbose=False, batch=len(images),
    )  # fmt: skip
    out = []
    for r in results:
        if len(r) == 0:
            out.append((np.zeros((0, *r.orig_shape), bool), np.zeros((0, 4)), np.zeros(0)))
            continue
        m = r.masks.data
        if m.shape[1:] != r.orig_shape:  # the non-retina masks live at input size; ultralytics' own resize
            m = scale_masks(m[None].float(), r.orig_shape)[0] > 0.5
        m = m.bool().numpy()
        nonempty = m.reshape(len(m), -1).any(1)  # we drop masks that are empty at the original size
        out.append((m[nonempty], r.boxes.xyxy.numpy()[nonempty], r.boxes.conf.numpy()[nonempty]))
    return out


def _fastsam_box_snap(boxes, hw):
    """ultralytics' FastSAM predictor snaps box edges within 20 px onto the border (a side effect we skip)."""
    from ultralytics.models.fastsam.utils import adjust_bboxes_to_image_border
    from ultralytics.utils.metrics import box_iou

    b = adjust_bboxes_to_image_border(torch.tensor(boxes).clone(), hw)
    full = torch.tensor([[0, 0, hw[1], hw[0]]], dtype=torch.float32)
    b[torch.nonzero(box_iou(full, b)[0] > 0.9).flatten()] = full
    return b.numpy()


def _assert_twins(ours, ref):
    ref_masks, ref_boxes, ref_scores = ref
    assert len(ours) == len(ref_masks)
    if len(ours) == 0:
        return
    om = ours.masks().reshape(len(ours), -1).astype(np.float32)
    rm = ref_masks.reshape(len(ref_masks), -1).astype(np.float32)
    inter = om @ rm.T
    union = om.sum(1)[:, None] + rm.sum(1)[None] - inter
    iou = inter / np.maximum(union, 1)
    # twins: same score (equal scores can come in either order), then the best-overlapping mask
    same_score = np.abs(ours.scores[:, None] - ref_scores[None]) <= 1e-3
    iou = np.where(same_score, iou, -1)
    twin = iou.argmax(1)
    assert len(set(twin.tolist())) == len(twin), "two masks matched the same twin"
    best = iou[np.arange(len(ours)), twin]
    assert best.min() >= 0.99, f"worst mask IoU {best.min():.4f}"
    assert np.abs(ours.scores - ref_scores[twin]).max() <= 1e-3
    snapped = _fastsam_box_snap(ours.boxes_xyxy, ours.image_hw)
    assert np.abs(snapped - ref_boxes[twin]).max() <= 1.0


def _scenes(sizes, seed):
    rng = np.random.default_rng(seed)
    return [make_scene(rng, h, w, n_shapes=(3, 7))[0] for h, w in sizes]


@pytest.fixture(scope="module")
def onnx_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("onnx")


def _load(path, runtime, onnx_cache, **kw):
    model = FastSAMModel.load(path, device="cpu", **kw)
    return model.use_onnxruntime(onnx_cache) if runtime == "onnxruntime" else model


@pytest.mark.parametrize("runtime", ["torch", "onnxruntime"])
@pytest.mark.parametrize("retina", [True, False])
@pytest.mark.parametrize("sizes", [[(200, 300)], [(333, 251)], [(240, 320), (150, 410)]], ids=["wide", "odd", "mixed"])
def test_random_weights_match_ultralytics(random_checkpoint, sizes, retina, runtime, onnx_cache):
    """Both runtimes against ultralytics' predictor: the same masks (IoU >= 0.99 each), count and scores."""
    params = EverythingParams(imgsz=320, conf=0.4, iou=0.9, max_det=300, retina=retina)
    images = _scenes(sizes, seed=len(sizes))
    model = _load(random_checkpoint, runtime, onnx_cache, allow_unpinned=True)
    assert model.runtime == runtime
    ours = Segmenter(model, params)(images)
    refs = _ultralytics(random_checkpoint, images, params)
    assert sum(len(b) for b in ours) >= 100 * len(images)  # hundreds of masks: a real stress of the matching
    for b, ref in zip(ours, refs, strict=True):
        _assert_twins(b, ref)


@pytest.mark.parametrize("runtime", ["torch", "onnxruntime"])
@pytest.mark.parametrize("retina", [True, False])
def test_trained_tiny_model_matches_ultralytics(retina, runtime, onnx_cache):
    params = EverythingParams(imgsz=160, conf=0.4, iou=0.9, retina=retina)
    images = _scenes([(160, 160), (200, 280), (97, 131)], seed=7)
    seg = Segmenter(_load(TINY_CHECKPOINT, runtime, onnx_cache), params)
    for im in images:
        ours = seg([im])[0]
        assert len(ours) > 0
        _assert_twins(ours, _ultralytics(TINY_CHECKPOINT, [im], params)[0])


def test_results_do_not_depend_on_batching(random_checkpoint):
    params = EverythingParams(imgsz=320, conf=0.4)
    seg = Segmenter(FastSAMModel.load(random_checkpoint, allow_unpinned=True, device="cpu"), params)
    images = _scenes([(200, 300), (200, 300)], seed=3)
    together = seg(images)
    alone = [seg([im])[0] for im in images]
    for a, b in zip(together, alone, strict=True):
        assert [r["counts"] for r in a.rles] == [r["counts"] for r in b.rles]


def test_rle_columns_agree_with_masks(random_checkpoint):
    import pycocotools.mask as mask_utils

    seg = Segmenter(
        FastSAMModel.load(random_checkpoint, allow_unpinned=True, device="cpu"), EverythingParams(imgsz=320)
    )
    b = seg(_scenes([(120, 170)], seed=9))[0]
    dense = b.masks()
    assert np.array_equal(b.areas, dense.reshape(len(b), -1).sum(1))
    ref = mask_utils.encode(np.asfortranarray(dense.transpose(1, 2, 0).astype(np.uint8)))
    assert [r["counts"] for r in ref] == [r["counts"] for r in b.rles]
    assert ((b.stability >= 0) & (b.stability <= 1)).all()
    assert list(b.mask_ids) == list(range(len(b)))
    assert (np.diff(b.scores) <= 0).all()


@pytest.mark.parametrize(
    ("images", "message"),
    [
        ([np.zeros((10, 10), np.uint8)], r"image 0 must be an \(H, W, 3\) uint8 RGB array"),
        ([np.zeros((10, 10, 3), np.float32)], "dtype float32"),
        ([np.zeros((0, 10, 3), np.uint8)], "image 0 is empty"),
    ],
)
def test_bad_images_are_refused(random_checkpoint, images, message):
    seg = Segmenter(
        FastSAMModel.load(random_checkpoint, allow_unpinned=True, device="cpu"), EverythingParams(imgsz=320)
    )
    with pytest.raises(ValueError, match=message):
        seg(images)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"imgsz": 100}, "multiple of 32"), ({"conf": 0}, r"conf must be in \(0, 1\]"), ({"max_det": 0}, "max_det")],
)
def test_bad_params_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        EverythingParams(**kwargs)


def test_unpinned_model_is_refused(random_checkpoint):
    from schemas.errors import CheckpointError

    with pytest.raises(CheckpointError, match="not a known checkpoint"):
        FastSAMModel.load(random_checkpoint)
    with pytest.raises(ValueError, match="half precision needs a CUDA device"):
        FastSAMModel.load(random_checkpoint, allow_unpinned=True, device="cpu", half=True)


def test_the_onnx_export_is_made_once_and_remade_when_unreadable(random_checkpoint, tmp_path):
    from fastsam_core.onnx_net import onnx_path

    model = FastSAMModel.load(random_checkpoint, allow_unpinned=True, device="cpu")
    first = model.use_onnxruntime(tmp_path, threads=1)
    path = onnx_path(tmp_path, model.sha256)
    assert first.onnx.path == path and [p.name for p in tmp_path.iterdir()] == [path.name]
    made = path.stat().st_mtime_ns
    assert model.use_onnxruntime(tmp_path).onnx.path.stat().st_mtime_ns == made  # cached: not exported again
    path.write_bytes(b"half an export")
    again = model.use_onnxruntime(tmp_path)
    x = torch.rand(1, 3, 96, 128)
    ref_preds, ref_protos = model.forward(x)
    preds, protos = again.forward(x)
    assert preds.shape == ref_preds.shape and protos.shape == ref_protos.shape
    assert torch.allclose(preds, ref_preds, atol=1e-3) and torch.allclose(protos, ref_protos, atol=1e-4)
    assert model.runtime == "torch" and again.runtime == "onnxruntime"
