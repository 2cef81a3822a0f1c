import pytest
import torch
import torch.nn.functional as F

from fastsam_core.resample import axis_taps, resize_window


@pytest.mark.parametrize(("src_hw", "out_hw"), [((40, 48), (200, 300)), ((64, 64), (1000, 700)), ((30, 20), (31, 19))])
def test_window_equals_interpolate_slice(src_hw, out_hw):
    torch.manual_seed(0)
    src = torch.randn(src_hw)
    ref = F.interpolate(src[None, None], out_hw, mode="bilinear", align_corners=False)[0, 0]
    y0, y1, x0, x1 = out_hw[0] // 5, out_hw[0] - 3, 2, out_hw[1] // 2
    rows = axis_taps(src_hw[0], out_hw[0], y0, y1)
    cols = axis_taps(src_hw[1], out_hw[1], x0, x1)
    ours = resize_window(src, rows, cols)
    assert torch.allclose(ours, ref[y0:y1, x0:x1], atol=1e-5)
