"""Bilinear resizing evaluated only inside a window of the output.

``F.interpolate(src, (out_h, out_w), mode="bilinear", align_corners=False)[y0:y1, x0:x1]`` costs
out_h * out_w per mask; a FastSAM mask only ever has pixels inside its box, so this computes the
same values for the box alone, from two taps per axis (PyTorch's own index and weight rule).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class AxisTaps:
    """Source indices and weights along one axis for a range of output pixels.

    Attributes:
        i0, i1: (n,) int64 source indices of the two taps.
        w0, w1: (n,) float32 weights, w0 + w1 = 1.
    """

    i0: torch.Tensor
    i1: torch.Tensor
    w0: torch.Tensor
    w1: torch.Tensor


def axis_taps(in_size: int, out_size: int, start: int, stop: int, device: torch.device | str = "cpu") -> AxisTaps:
    """Taps for output pixels [start, stop) when resizing in_size -> out_size (align_corners=False)."""
    scale = torch.tensor(in_size / out_size, dtype=torch.float32)
    dst = torch.arange(start, stop, dtype=torch.float32, device=device)
    src = ((dst + 0.5) * scale.to(device) - 0.5).clamp_(min=0)
    i0 = src.to(torch.int64)
    i1 = torch.where(i0 < in_size - 1, i0 + 1, i0)
    w1 = src - i0
    return AxisTaps(i0, i1, 1.0 - w1, w1)


def resize_window(src: torch.Tensor, rows: AxisTaps, cols: AxisTaps) -> torch.Tensor:
    """Resample a (H, W) float source at the given row and column taps; returns (len(rows), len(cols))."""
    r = src[rows.i0] * rows.w0[:, None] + src[rows.i1] * rows.w1[:, None]
    return r[:, cols.i0] * cols.w0 + r[:, cols.i1] * cols.w1
