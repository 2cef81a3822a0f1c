"""FastSAM's network run by ONNX Runtime, behind the same `forward` as the torch network.

Only the network moves: letterboxing, NMS, mask decoding, RLE, stability and prompts stay in
`fastsam_core` and run unchanged on its outputs, so every prompt mode works on both runtimes.

The network is exported once from the loaded, verified checkpoint (TorchScript exporter, opset
`OPSET`, dynamic batch and input size) into a cache folder, named by the checkpoint's sha256 and the
export settings, and written atomically, so actors on one machine share one export. Providers:
TensorRT and CUDA when the model's device is a GPU and they are installed, else the CPU.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

#: ONNX opset of the export.
OPSET = 17


def export_settings() -> dict:
    """What an export depends on besides the checkpoint (part of its cache name)."""
    return {"opset": OPSET, "dynamic": True, "exporter": "torchscript", "torch": torch.__version__.split("+")[0]}


def settings_key() -> str:
    """12 hex digits naming `export_settings()` in an export's file name."""
    return hashlib.sha256(json.dumps(export_settings(), sort_keys=True).encode()).hexdigest()[:12]


def onnx_path(cache_dir: str | Path, sha256: str) -> Path:
    """Where the export of the checkpoint with hash `sha256` lives in `cache_dir`."""
    return Path(cache_dir) / f"fastsam-{sha256}-{settings_key()}.onnx"


class _Outputs(torch.nn.Module):
    """The network with its two outputs named: preds (B, 4 + nc + 32, A), protos (B, 32, H/4, W/4)."""

    def __init__(self, net: torch.nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.net(x)
        preds, protos = out[0] if isinstance(out[0], (tuple, list)) else out
        return preds, protos


def export_module(
    module: torch.nn.Module,
    example: tuple[torch.Tensor, ...],
    path: str | Path,
    input_names: list[str],
    output_names: list[str],
    dynamic_axes: dict[str, dict[int, str]],
) -> Path:
    """Export `module` (eval mode) with the TorchScript exporter at `OPSET` to `path`, atomically.

    The file is written beside `path` and renamed into place, so a reader sees a whole export or none.
    The tracer's warnings (shapes it records as constants, opset notes) are silenced: the exports
    are checked against torch by the tests, and a first run on a new machine should not print pages.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".onnx.tmp")
    os.close(fd)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module.eval(),
                example,
                tmp,
                dynamo=False,
                opset_version=OPSET,
                input_names=input_names,
                output_names=output_names,
                dynamic_axes=dynamic_axes,
            )
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return path


def export_onnx(net: torch.nn.Module, path: str | Path, imgsz: int = 640) -> Path:
    """Export an ultralytics segmentation network (float32, eval mode) to `path`, atomically.

    The detection head is switched to dynamic anchors for the export (so any input size works)
    and restored afterwards.
    """
    head = net.model[-1]
    before = head.dynamic
    head.dynamic = True
    try:
        dummy = torch.zeros(1, 3, imgsz, imgsz, device=next(net.parameters()).device)
        return export_module(
            _Outputs(net),
            (dummy.float(),),
            path,
            ["images"],
            ["preds", "protos"],
            {
                "images": {0: "batch", 2: "height", 3: "width"},
                "preds": {0: "batch", 2: "anchors"},
                "protos": {0: "batch", 2: "proto_height", 3: "proto_width"},
            },
        )
    finally:
        head.dynamic = before
        net.eval()


def open_session(path: str | Path, device: torch.device, threads: int | None = None):
    """An ONNX Runtime session of `path` and its execution providers, best first.

    Args:
        path: an exported network.
        device: a GPU selects the TensorRT and CUDA providers where installed; the CPU provider always follows.
        threads: intra-op threads on the CPU; None = ONNX Runtime's default (all cores).

    Returns:
        (onnxruntime.InferenceSession, list of provider names).
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    # Threads that spin between runs would take cores from decoding and CLIP in the same process.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    wanted = ["CPUExecutionProvider"]
    if device.type == "cuda":
        wanted = ["TensorrtExecutionProvider", "CUDAExecutionProvider", *wanted]
    available = set(ort.get_available_providers())
    providers = [p for p in wanted if p in available]
    return ort.InferenceSession(str(path), opts, providers=providers), providers


def cached_session(
    path: str | Path, export: Callable[[Path], object], device: torch.device, threads: int | None = None
):
    """`open_session` of the export at `path`, made by `export(path)` first.

    The export is made when the file is missing, and made again, once, when it does not open (a
    disk fault, a foreign file).
    """
    path = Path(path)
    if not path.is_file():
        export(path)
    try:
        return open_session(path, device, threads)
    except Exception:
        export(path)
        return open_session(path, device, threads)


class OnnxNetwork:
    """An ONNX Runtime session of the exported network.

    Attributes:
        path: the .onnx file.
        providers: the execution providers in use, best first.
    """

    def __init__(
        self,
        path: str | Path,
        device: torch.device,
        threads: int | None = None,
        export: Callable[[Path], object] | None = None,
    ):
        """Open a session.

        Args:
            path: the exported network.
            device: where results go (and, for a GPU, where the CUDA/TensorRT providers run).
            threads: intra-op threads on the CPU; None = ONNX Runtime's default (all cores).
            export: makes the file at `path` where it is missing or does not open (`cached_session`).
        """
        self.path = Path(path)
        self.device = device
        if export is None:
            self.session, self.providers = open_session(self.path, device, threads)
        else:
            self.session, self.providers = cached_session(self.path, export, device, threads)

    def __call__(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The preds and protos for a (B, 3, H, W) float batch in [0, 1], as tensors on `device`."""
        x = np.ascontiguousarray(batch.detach().float().cpu().numpy())
        preds, protos = self.session.run(["preds", "protos"], {"images": x})
        return torch.from_numpy(preds).to(self.device), torch.from_numpy(protos).to(self.device)
