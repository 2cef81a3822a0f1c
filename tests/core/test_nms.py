"""fastsam_core.nms against ultralytics' non_max_suppression and torchvision's kernel: equal tensors."""

import itertools
from types import SimpleNamespace

import pytest
import torch
import torchvision
from ultralytics.utils import nms as ultralytics_nms

from fastsam_core import nms


def _predictions(seed: int, batch: int, anchors: int, nc: int, extra: int = 5, levels: int = 0) -> torch.Tensor:
    """(B, 4 + nc + extra, anchors) raw outputs: clustered xywh boxes (many overlaps), scores in [0, 1]
    (rounded to `levels` values when given, so that many tie)."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.rand(batch, 2, 12, generator=g) * 600
    pick = torch.randint(0, 12, (batch, anchors), generator=g)
    xy = torch.gather(centres, 2, pick[:, None].expand(-1, 2, -1)) + torch.randn(batch, 2, anchors, generator=g) * 4
    wh = 40 + torch.rand(batch, 2, anchors, generator=g) * 80
    scores = torch.rand(batch, nc, anchors, generator=g)
    if levels:
        scores = (scores * levels).floor() / levels
    coeffs = torch.randn(batch, extra, anchors, generator=g)
    return torch.cat([xy, wh, scores, coeffs], 1)


def _theirs(pred, conf, iou, max_det, nc, max_nms=nms.MAX_NMS):
    return ultralytics_nms.non_max_suppression(
        pred.clone(), conf, iou, max_det=max_det, nc=nc, max_time_img=1e9, max_nms=max_nms
    )


@pytest.mark.parametrize(
    "conf,iou,max_det,nc,levels",
    [
        (0.05, 0.9, 120, 1, 0),  # FastSAM's iou: almost nothing suppressed
        (0.4, 0.5, 300, 1, 0),  # heavy suppression: the prefix must grow
        (0.4, 0.7, 10, 1, 20),  # ties everywhere
        (0.2, 0.6, 50, 3, 0),  # classes never suppress each other
        (0.99, 0.9, 300, 1, 0),  # fewer candidates than max_det
        (1.0, 0.9, 300, 1, 0),  # no candidates at all
    ],
)
def test_same_detections_as_ultralytics(conf, iou, max_det, nc, levels):
    pred = _predictions(seed=max_det, batch=3, anchors=4000, nc=nc, levels=levels)
    ours = nms.non_max_suppression(pred.clone(), conf, iou, max_det, nc)
    theirs = _theirs(pred, conf, iou, max_det, nc)
    assert len(ours) == len(theirs) == 3
    for a, b in zip(ours, theirs, strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape
        assert torch.equal(a, b)
    if conf < 1:
        assert all(len(a) for a in ours)


def test_same_detections_past_the_candidate_cap(monkeypatch):
    monkeypatch.setattr(nms, "MAX_NMS", 700)
    pred = _predictions(seed=5, batch=2, anchors=3000, nc=1, levels=50)
    ours = nms.non_max_suppression(pred.clone(), 0.1, 0.8, 100, 1)
    theirs = _theirs(pred, 0.1, 0.8, 100, 1, max_nms=700)
    for a, b in zip(ours, theirs, strict=True):
        assert len(a) == 100
        assert torch.equal(a, b)


@pytest.mark.parametrize("iou,max_det", list(itertools.product([0.3, 0.6, 0.95], [1, 7, 64, 5000])))
def test_greedy_keep_is_torchvisions_head(iou, max_det):
    g = torch.Generator().manual_seed(int(iou * 100) + max_det)
    xy = torch.randint(0, 300, (3000, 2), generator=g).float()
    boxes = torch.cat([xy, xy + torch.randint(5, 120, (3000, 2), generator=g)], 1)
    scores = torch.randint(0, 40, (3000,), generator=g).float() / 40  # many ties
    full = torchvision.ops.nms(boxes, scores, iou)
    assert torch.equal(nms.greedy_keep(boxes, scores, iou, max_det), full[:max_det])


def test_a_slow_batch_keeps_every_image(monkeypatch):
    """ultralytics gives up after 2 s + 0.05 s per image and returns no detections for the rest of the
    batch; on a CPU a 1024 px image with ~20,000 candidates takes about 1 s. A clock that jumps 10 s
    per reading stands in for that here: ultralytics loses images 2 and 3, this module keeps them."""
    clock = itertools.count(step=10.0)
    monkeypatch.setattr(ultralytics_nms, "time", SimpleNamespace(time=lambda: next(clock)))
    pred = _predictions(seed=9, batch=3, anchors=2000, nc=1)
    theirs = ultralytics_nms.non_max_suppression(pred.clone(), 0.05, 0.9, max_det=100, nc=1)
    assert [len(d) for d in theirs] == [100, 0, 0]
    ours = nms.non_max_suppression(pred.clone(), 0.05, 0.9, 100, 1)
    for i in range(3):
        assert torch.equal(ours[i], _theirs(pred[i : i + 1], 0.05, 0.9, 100, 1)[0])


def test_the_kernel_loads_without_importing_torchvision():
    """The actor's first image does not wait for torchvision's import (it pulls in torch._dynamo)."""
    import subprocess
    import sys

    code = (
        "import sys, torch\n"
        "from fastsam_core import nms\n"
        "b = torch.tensor([[0., 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30]])\n"
        "print(nms.nms_kernel()(b, torch.tensor([0.9, 0.8, 0.7]), 0.5).tolist(), 'torchvision' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split("\n")[-2] == "[0, 2] False"


def test_the_kernel_is_torchvisions():
    pred = _predictions(3, 1, 4000, 1)[0]
    boxes, scores = pred[:4].T.contiguous(), pred[4].contiguous()
    boxes = torch.cat([boxes[:, :2], boxes[:, :2] + boxes[:, 2:]], 1)
    for iou in (0.3, 0.7, 0.9):
        assert torch.equal(nms.nms_kernel()(boxes, scores, iou), torchvision.ops.nms(boxes, scores, iou))
