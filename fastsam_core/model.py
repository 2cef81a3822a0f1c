"""Loading a FastSAM checkpoint (ultralytics YOLOv8-seg format, one class) onto a device."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from fastsam_core.checkpoints import known_checkpoint, verify_checkpoint
from schemas.errors import CheckpointError

if TYPE_CHECKING:
    from fastsam_core.onnx_net import OnnxNetwork

os.environ.setdefault("YOLO_OFFLINE", "1")  # ultralytics must never reach for the network from here


def pick_device(device: str | torch.device | None = None) -> torch.device:
    """The requested device, or CUDA when present, else CPU."""
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@dataclass
class FastSAMModel:
    """A loaded FastSAM network.

    Attributes:
        net: the ultralytics SegmentationModel, fused, in eval mode, on `device`.
        device: where it runs.
        half: whether it runs in float16 (the default on CUDA).
        stride: the largest stride in pixels; input sides are multiples of it.
        sha256: the verified hash of the checkpoint file.
        name: the checkpoint's file name.
        default_imgsz: the input size the checkpoint was trained for (1024 for FastSAM).
        nc: number of classes (1 for FastSAM).
        onnx: when set, `forward` runs this ONNX Runtime session of the network instead of `net`
            (`use_onnxruntime`).
    """

    net: torch.nn.Module
    device: torch.device
    half: bool
    stride: int
    sha256: str
    name: str
    default_imgsz: int
    nc: int = 1
    onnx: OnnxNetwork | None = None

    @classmethod
    def load(
        cls,
        path: str | Path,
        sha256: str | None = None,
        allow_unpinned: bool = False,
        device: str | torch.device | None = None,
        half: bool | None = None,
    ) -> FastSAMModel:
        """Verify a local checkpoint's sha256, then load it.

        Args:
            path: local file (resolving URIs to files is the caller's job).
            sha256: pinned hash; None accepts only the known checkpoints in the registry.
            allow_unpinned: load an unknown, unpinned file anyway (it is a pickle: it runs code).
            device: "cpu", "cuda", "cuda:1", ...; CUDA when present by default.
            half: float16 inference; by default on CUDA only.
        """
        digest = verify_checkpoint(path, sha256, allow_unpinned)
        from ultralytics.nn.modules.head import Segment
        from ultralytics.nn.tasks import load_checkpoint

        dev = pick_device(device)
        use_half = dev.type == "cuda" if half is None else bool(half)
        if use_half and dev.type != "cuda":
            raise ValueError("half precision needs a CUDA device; use half=False on the CPU")
        net, _ = load_checkpoint(str(path), device=dev, fuse=False)
        net = net.fuse(verbose=False).eval()  # fused as ultralytics' predictor does, without printing a summary
        if not isinstance(getattr(net, "model", [None])[-1], Segment):
            raise CheckpointError(f"model file {path} is not a segmentation model (a YOLOv8-seg / FastSAM checkpoint)")
        net = net.half() if use_half else net.float()
        for p in net.parameters():
            p.requires_grad_(False)
        known = known_checkpoint(digest)
        return cls(
            net=net.eval(),
            device=dev,
            half=use_half,
            stride=int(net.stride.max()),
            sha256=digest,
            name=known.name if known else Path(path).name,
            default_imgsz=known.imgsz if known else 1024,
            nc=len(net.names),
        )

    @torch.inference_mode()
    def forward(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the network.

        Args:
            batch: (B, 3, H, W) RGB in [0, 1], on `device`, H and W multiples of `stride`.

        Returns:
            preds (B, 4 + nc + 32, A) raw box/score/coefficient rows per anchor, and
            protos (B, 32, H / 4, W / 4) mask prototypes.
        """
        if self.onnx is not None:
            return self.onnx(batch)
        out = self.net(batch.half() if self.half else batch.float())
        preds, protos = out[0] if isinstance(out[0], (tuple, list)) else out
        return preds, protos

    @property
    def runtime(self) -> str:
        """What runs the network: "torch" or "onnxruntime"."""
        return "torch" if self.onnx is None else "onnxruntime"

    def use_onnxruntime(self, cache_dir: str | Path, threads: int | None = None) -> FastSAMModel:
        """This model with its network run by ONNX Runtime, exported into `cache_dir` on first use.

        Args:
            cache_dir: folder of exports, named by checkpoint sha256 and export settings.
            threads: CPU threads of the session; None = ONNX Runtime's default.

        Raises:
            ValueError: half precision was asked for (the export is float32).
        """
        from fastsam_core.onnx_net import OnnxNetwork, export_onnx, onnx_path

        if self.half:
            raise ValueError("the onnxruntime runtime runs float32; set half to false or use the torch runtime")
        path = onnx_path(cache_dir, self.sha256)
        session = OnnxNetwork(path, self.device, threads, export=lambda p: export_onnx(self.net, p))
        return replace(self, onnx=session)

    def warmup(self, imgsz: int) -> None:
        """One forward pass on a blank image, so the first real batch is not slowed by lazy set-up."""
        self.forward(torch.zeros(1, 3, imgsz, imgsz, device=self.device))
