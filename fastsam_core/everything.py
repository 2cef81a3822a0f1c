"""Everything mode: every object in a batch of images, as RLE masks.

The steps and their numerics follow ultralytics' FastSAM predictor (letterbox, one forward pass,
NMS, masks = sigmoid(coefficients x prototypes) cropped to the box, dropped when empty), so the
two agree mask for mask. NMS is `fastsam_core.nms`: ultralytics' detections, without its time
limit (which silently empties the last images of a slow batch) and its all-pairs cost.

What differs otherwise is memory and time: ultralytics upsamples every mask to the
whole image (N x H x W) before cropping; here each mask is evaluated only inside its box, a chunk
of masks at a time, and becomes RLE before the next chunk starts. On the CPU, a retina window is
evaluated only where its value can cross a threshold (`fastsam_core.sign_windows`: the same bits,
a fraction of the work).

Boxes are the detector's boxes in original pixels, clipped to the image. ultralytics' FastSAM
predictor also moves box edges within 20 px of the border onto it (an in-place side effect of
`adjust_bboxes_to_image_border`); that makes boxes disagree with their masks, so it is not done.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from fastsam_core import grids, sign_windows
from fastsam_core import rle as rle_utils
from fastsam_core.batch import MaskBatch
from fastsam_core.model import FastSAMModel
from fastsam_core.nms import non_max_suppression
from fastsam_core.resample import axis_taps, resize_window
from schemas.params import EverythingParams

__all__ = ["EverythingParams", "Segmenter", "letterbox"]


def _check_images(images: Sequence[np.ndarray]) -> None:
    for i, im in enumerate(images):
        if not isinstance(im, np.ndarray) or im.dtype != np.uint8 or im.ndim != 3 or im.shape[2] != 3:
            shape = getattr(im, "shape", None)
            dtype = getattr(im, "dtype", type(im).__name__)
            raise ValueError(f"image {i} must be an (H, W, 3) uint8 RGB array, but got shape {shape}, dtype {dtype}")
        if im.shape[0] == 0 or im.shape[1] == 0:
            raise ValueError(f"image {i} is empty: shape {im.shape}")


def letterbox(images: Sequence[np.ndarray], imgsz: int, stride: int) -> np.ndarray:
    """Resize and pad a batch to one input shape, as ultralytics' predictor does.

    Images of one shape get the smallest stride-multiple rectangle; mixed shapes a square.

    Returns:
        (B, h, w, 3) uint8.
    """
    from ultralytics.data.augment import LetterBox

    same = len({im.shape for im in images}) == 1
    lb = LetterBox(imgsz, auto=same, stride=stride)
    return np.stack([lb(image=im) for im in images])


def _upsample_factor(mh: int, mw: int, h: int, w: int) -> int:
    """Ultralytics' pre-upsampling factor (1, 2 or 4) that makes the letterbox padding whole pixels."""
    gain = min(4 * mh / h, 4 * mw / w)
    pad = (4 * mh - max(round(h * gain), 1)) | (4 * mw - max(round(w * gain), 1))
    return 4 // math.gcd(4, pad | pad // 2)


def _content_crop(in_h: int, in_w: int, h: int, w: int) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) of the image content inside a letterboxed (in_h, in_w) map."""
    gain = min(in_h / h, in_w / w)
    pad_w, pad_h = (in_w - max(round(w * gain), 1)) / 2, (in_h - max(round(h * gain), 1)) / 2
    top, left = round(pad_h - 0.1), round(pad_w - 0.1)
    return top, top + max(round(h * gain), 1), left, left + max(round(w * gain), 1)


def _box_window(box: Sequence[float], h: int, w: int) -> tuple[int, int, int, int]:
    """Integer pixels (x0, y0, x1, y1), end-exclusive, with x0 <= x < x1 iff box.x1 <= x < box.x2."""
    x1, y1, x2, y2 = box
    x0, y0 = min(max(math.ceil(x1), 0), w), min(max(math.ceil(y1), 0), h)
    return x0, y0, max(min(math.ceil(x2), w), x0), max(min(math.ceil(y2), h), y0)


class Segmenter:
    """Everything mode on a loaded model. Stateless between calls; safe to reuse.

    Args:
        model: the loaded model.
        params: everything-mode settings (FastSAM's defaults when None).
        dense_windows: evaluate every pixel of each retina window (True), or only the pixels whose
            cell straddles a threshold (False, `sign_windows`: the same output); None = dense on a
            GPU, straddling cells only on the CPU.
    """

    def __init__(self, model: FastSAMModel, params: EverythingParams | None = None, dense_windows: bool | None = None):
        self.model = model
        self.params = params or EverythingParams(imgsz=model.default_imgsz)
        self.dense_windows = dense_windows

    def __call__(self, images: Sequence[np.ndarray]) -> list[MaskBatch]:
        """Segment everything in a batch.

        Args:
            images: B RGB uint8 arrays (H_i, W_i, 3), of any sizes.

        Returns:
            B MaskBatches, masks sorted by score (mask_ids 0..N-1 in that order).
        """
        from ultralytics.utils import ops

        if not images:
            return []
        _check_images(images)
        p, m = self.params, self.model
        x = torch.from_numpy(letterbox(images, p.imgsz, m.stride)).to(m.device)
        x = x.permute(0, 3, 1, 2).contiguous().float().div_(255)
        preds, protos = m.forward(x)
        dets = non_max_suppression(preds, p.conf, p.iou, max_det=p.max_det, nc=m.nc)
        in_hw = tuple(x.shape[2:])
        out = []
        for det, proto, im in zip(dets, protos, images, strict=True):
            orig_hw = im.shape[:2]
            boxes_in = det[:, :4].float()
            boxes = ops.scale_boxes(in_hw, boxes_in.clone(), orig_hw)
            out.append(self._masks(det, proto.float(), boxes_in, boxes, in_hw, orig_hw))
        return out

    def _masks(self, det, proto, boxes_in, boxes, in_hw, orig_hw) -> MaskBatch:
        """Decode the masks of one image inside their boxes, chunk by chunk, straight to RLE."""
        h, w = orig_hw
        c, mh, mw = proto.shape
        coeffs = det[:, 6:].float()
        off = self.params.stability_offset
        retina = self.params.retina
        dense = self.dense_windows if self.dense_windows is not None else proto.device.type != "cpu"
        if retina:
            f = _upsample_factor(mh, mw, h, w)
            top, bottom, left, right = _content_crop(f * mh, f * mw, h, w)
            rows_all = axis_taps(bottom - top, h, 0, h, proto.device)
            cols_all = axis_taps(right - left, w, 0, w, proto.device)
            lazy = False  # upsampled by f only where a window reads (grids.Upsampled), not whole maps
            if not dense:
                rows_np, cols_np = sign_windows.numpy_taps(rows_all), sign_windows.numpy_taps(cols_all)
                lazy = f > 1 and grids.upsampling_matches_torch(mh, mw, f)
                if lazy:
                    f_taps = (grids.upsample_taps(mh, f), grids.upsample_taps(mw, f))
            per_mask = (f * f + 1) * mh * mw if not lazy else mh * mw
        else:
            ih, iw = in_hw
            top, bottom, left, right = _content_crop(ih, iw, h, w)
            rows_in, cols_in = axis_taps(mh, ih, 0, ih, proto.device), axis_taps(mw, iw, 0, iw, proto.device)
            rows_all = axis_taps(bottom - top, h, 0, h, proto.device)
            cols_all = axis_taps(right - left, w, 0, w, proto.device)
            per_mask = ih * iw
            pad = math.ceil(max(h / (bottom - top), w / (right - left))) + 1
        chunk = max(1, self.params.chunk_pixels // per_mask)
        # Host copies made once: reading tensor elements one by one would sync with the GPU per mask.
        boxes_host, boxes_in_host = boxes.cpu().tolist(), boxes_in.cpu().tolist()
        counts, stab = [], []
        for s in range(0, len(det), chunk):
            logits = (coeffs[s : s + chunk] @ proto.view(c, -1)).view(-1, mh, mw)
            if retina and f > 1 and not lazy:
                logits = F.interpolate(logits[None], scale_factor=f, mode="bilinear")[0]
            if retina and not dense:  # the chunk's run lengths straight from its windows' cells
                host = logits.numpy()
                if lazy:
                    grid = grids.Upsampled(host, f, (top, bottom, left, right), f_taps)
                else:
                    grid = grids.Plain(host[:, top:bottom, left:right])
                if s == 0:  # the same for every chunk of the image
                    cells = (grid.axis_cells(rows_np.i0, rows_np.i1, 0), grid.axis_cells(cols_np.i0, cols_np.i1, 1))
                wins = np.array([_box_window(b, h, w) for b in boxes_host[s : s + len(logits)]], np.int64)
                r = sign_windows.windows(grid, rows_np, cols_np, *cells, wins, off, (h, w))
                counts.extend(r.counts)
                stab.extend(torch.from_numpy(_ratio_np(r.above, r.union)))
                continue
            windows, origins, held = [], [], 0
            for k in range(len(logits)):
                i = s + k
                x0, y0, x1, y1 = _box_window(boxes_host[i], h, w)
                if retina:
                    src = logits[k, top:bottom, left:right]
                    win = resize_window(src, _take(rows_all, y0, y1), _take(cols_all, x0, x1))
                    binary = win > 0
                    stability = _stability(win, off)
                else:
                    coarse, stability = self._coarse_window(logits[k], boxes_in_host[i], rows_in, cols_in)
                    # One model pixel spreads over about w / (right - left) original pixels when resized.
                    x0, y0, x1, y1 = _grow((x0, y0, x1, y1), pad, h, w)
                    src = coarse.float()[top:bottom, left:right]
                    binary = resize_window(src, _take(rows_all, y0, y1), _take(cols_all, x0, x1)) > 0.5
                windows.append(binary)
                origins.append((y0, x0))
                stab.append(stability)
                held += binary.numel()
                if held >= 4 * self.params.chunk_pixels:  # large masks of a large image: RLE them now
                    counts.extend(rle_utils.window_counts(windows, origins, (h, w)))
                    windows, origins, held = [], [], 0
            counts.extend(rle_utils.window_counts(windows, origins, (h, w)))
        if not counts:
            return MaskBatch.empty((h, w))
        areas = np.array([c[1::2].sum() for c in counts], np.int64)
        keep = np.flatnonzero(areas > 0)  # ultralytics drops detections whose mask is empty
        if not keep.size:
            return MaskBatch.empty((h, w))
        idx = torch.from_numpy(keep).to(det.device)
        return MaskBatch(
            image_hw=(h, w),
            boxes_xyxy=boxes[idx].cpu().numpy(),
            scores=det[idx, 4].float().cpu().numpy(),
            rles=rle_utils.from_many_counts([counts[i] for i in keep], (h, w)),
            areas=areas[keep],
            stability=torch.stack(stab).cpu().numpy()[keep],
            mask_ids=np.arange(len(keep), dtype=np.int32),
        )

    def _coarse_window(self, logits, box_in, rows_in, cols_in):
        """Model-resolution mask (ultralytics' non-retina path) as a full (ih, iw) bool map."""
        ih, iw = len(rows_in.i0), len(cols_in.i0)
        x0, y0, x1, y1 = _box_window(box_in, ih, iw)
        win = resize_window(logits, _take(rows_in, y0, y1), _take(cols_in, x0, x1))
        full = torch.zeros((ih, iw), dtype=torch.bool, device=logits.device)
        full[y0:y1, x0:x1] = win > 0
        return full, _stability(win, self.params.stability_offset)


def _grow(box: tuple[int, int, int, int], pad: int, h: int, w: int) -> tuple[int, int, int, int]:
    """An integer (x0, y0, x1, y1) box grown by `pad` pixels on each side, clipped to the image."""
    x0, y0, x1, y1 = box
    return max(x0 - pad, 0), max(y0 - pad, 0), min(x1 + pad, w), min(y1 + pad, h)


def _take(t, start: int, stop: int):
    """The taps of output pixels [start, stop)."""
    return type(t)(t.i0[start:stop], t.i1[start:stop], t.w0[start:stop], t.w1[start:stop])


def _stability(logits: torch.Tensor, offset: float) -> torch.Tensor:
    """IoU of (logits > offset) and (logits > -offset); 0 when both are empty."""
    return _ratio((logits > offset).sum(), (logits > -offset).sum())


def _ratio_np(inter: np.ndarray, union: np.ndarray) -> np.ndarray:
    """`_ratio` of (N,) int64 counts: float32(inter) / float32(union), 0 where union is 0 (the same bits)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, inter.astype(np.float32) / np.maximum(union, 1).astype(np.float32), np.float32(0))


def _ratio(inter: torch.Tensor, union: torch.Tensor) -> torch.Tensor:
    """The ratio of two int64 pixel counts as a float32 scalar tensor (0 when `union` is 0)."""
    return torch.where(union > 0, inter / union.clamp(min=1), torch.zeros((), device=union.device)).float()
