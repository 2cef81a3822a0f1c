"""Non-maximum suppression with ultralytics' results, without its time limit and O(n^2) cost.

ultralytics' `non_max_suppression` keeps candidates above `conf`, runs torchvision's greedy NMS on
all of them (up to 30,000) and keeps the first `max_det`. Two things make it unfit here:

- It stops after 2 s + 0.05 s per image of a batch and returns *no detections* for the images it
  did not reach, with only a log warning. On a CPU, one 1024 px image with ~20,000 candidates takes
  about 1 s, so a batch of four lost its last two images.
- Greedy NMS decides each box from the boxes before it in score order only, so the first `max_det`
  kept boxes are found among a prefix of the sorted candidates. torchvision's kernel compares every
  pair of all candidates instead; here NMS runs on a growing prefix (8 x max_det, then x4) until
  max_det boxes are kept or the candidates run out.

The result is the same tensor, row for row: the same filtering, box conversion, pre-sort, class
offset and torchvision kernel (its order is a stable descending sort, so an already sorted prefix
keeps it).

The kernel is torchvision's compiled `nms` op, loaded from its library without importing the
torchvision package: that import pulls in `torch._dynamo` (about 1.4 s on a 2-core machine, in
every actor, before its first image).
"""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Callable
from pathlib import Path

import torch
from ultralytics.utils.ops import xywh2xyxy

MAX_NMS = 30_000  # ultralytics: candidates kept (by confidence) before NMS
MAX_WH = 7680  # ultralytics: per-class box offset, so classes never suppress each other


@functools.cache
def nms_kernel() -> Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]:
    """`torch.ops.torchvision.nms(boxes, scores, iou)`: what `torchvision.ops.nms` runs on float boxes.

    Loaded from torchvision's compiled ops (`_C_stable`, or `_C` in older releases) when the package
    is not imported yet; through the package where its library cannot be found.
    """
    spec = importlib.util.find_spec("torchvision")
    folder = Path(spec.submodule_search_locations[0]) if spec and spec.submodule_search_locations else None
    libs = (
        [p for n in ("_C_stable", "_C") for p in sorted(folder.glob(f"{n}.*")) if p.suffix in _LIBS] if folder else []
    )
    for lib in [None, *libs]:
        if lib is not None:
            torch.ops.load_library(str(lib))
        try:
            return torch.ops.torchvision.nms
        except (AttributeError, RuntimeError):  # not registered (yet)
            continue
    import torchvision

    return torchvision.ops.nms


_LIBS = (".so", ".pyd", ".dylib")


def greedy_keep(boxes: torch.Tensor, scores: torch.Tensor, iou: float, max_det: int) -> torch.Tensor:
    """The first `max_det` indices `torchvision.ops.nms(boxes, scores, iou)` returns, in that order.

    Args:
        boxes: (n, 4) xyxy.
        scores: (n,) of the same dtype and device.
        iou: boxes overlapping a kept box by more than this are suppressed.
        max_det: how many kept indices are wanted.

    Returns:
        (k,) int64 indices into `boxes`, k <= max_det, by descending score.
    """
    n = len(scores)
    order = scores.sort(stable=True, descending=True).indices
    size = min(n, 8 * max_det)
    while True:
        head = order[:size]
        keep = head[nms_kernel()(boxes[head], scores[head], iou)]
        if len(keep) >= max_det or size == n:
            return keep[:max_det]
        size = min(n, 4 * size)


def non_max_suppression(prediction: torch.Tensor, conf: float, iou: float, max_det: int, nc: int) -> list[torch.Tensor]:
    """Detections of a batch of raw YOLO outputs (single label per box, class-aware, no time limit).

    Args:
        prediction: (B, 4 + nc + extra, anchors): xywh boxes, class scores, then mask coefficients.
        conf: candidates need a class score above this.
        iou: NMS threshold (IoU above it suppresses).
        max_det: detections kept per image.
        nc: number of classes.

    Returns:
        B tensors (k, 6 + extra): x1, y1, x2, y2, score, class, extra...; k <= max_det, by score.
    """
    extra = prediction.shape[1] - nc - 4
    candidates = prediction[:, 4 : 4 + nc].amax(1) > conf
    out = []
    for x, keep in zip(prediction.transpose(-1, -2), candidates, strict=True):
        x = x[keep]
        if not len(x):
            out.append(torch.zeros((0, 6 + extra), device=prediction.device))
            continue
        x[:, :4] = xywh2xyxy(x[:, :4])
        box, cls, mask = x.split((4, nc, extra), 1)
        score, label = cls.max(1, keepdim=True)  # score = the amax above: every row is a candidate
        x = torch.cat((box, score, label.float(), mask), 1)
        if len(x) > MAX_NMS:
            x = x[x[:, 4].argsort(descending=True)[:MAX_NMS]]
        out.append(x[greedy_keep(x[:, :4] + x[:, 5:6] * MAX_WH, x[:, 4], iou, max_det)])
    return out
