"""CLIP's image and text towers run by ONNX Runtime, behind `ClipEmbedder`'s own calls.

Only the towers move: cropping, open_clip's preprocess, tokenising, the softmax and labels stay
where they are, so both runtimes see the same inputs. Each tower is exported once from the loaded,
verified weights (TorchScript exporter, `onnx_net.OPSET`, dynamic batch) into the weights cache,
named by the architecture, the weights' sha256 and the export settings, and written atomically, so
the actors of one machine share one export. Outputs are unit vectors, like
`encode_image(..., normalize=True)`; on the CPU they agree with torch's to about 1e-6.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch

from fastsam_core.onnx_net import cached_session, export_module, settings_key

TOWERS = ("image", "text")


def weights_id(model: torch.nn.Module) -> str:
    """sha256 of a model's state (names, dtypes, shapes, bytes): names random weights, which have no file."""
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def tower_path(cache_dir: str | Path, arch: str, sha256: str, tower: str) -> Path:
    """Where the export of one tower (`TOWERS`) of `arch` with weights `sha256` lives in `cache_dir`."""
    return Path(cache_dir) / f"clip-{arch}-{sha256}-{settings_key()}-{tower}.onnx"


class _Tower(torch.nn.Module):
    """One tower of an open_clip model as a module: `encode_image` or `encode_text`, normalised."""

    def __init__(self, model: torch.nn.Module, encode: str):
        super().__init__()
        self.model = model
        self.encode = encode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return getattr(self.model, self.encode)(x, normalize=True)


def export_tower(
    model: torch.nn.Module, tower: str, path: str | Path, image_size: tuple[int, int], context: int
) -> Path:
    """Export one tower of an open_clip model (float32) to `path`, atomically.

    Args:
        model: an open_clip CLIP model in float32.
        tower: "image": (B, 3, H, W) float32 -> (B, D); "text": (B, context) int64 tokens -> (B, D).
        path: the .onnx file to write.
        image_size: (H, W), the image tower's input size.
        context: the text tower's token count.
    """
    device = next(model.parameters()).device
    if tower == "image":
        module, example, name = _Tower(model, "encode_image"), torch.zeros(2, 3, *image_size, device=device), "images"
    else:
        example = torch.zeros(2, context, dtype=torch.long, device=device)
        module, name = _Tower(model, "encode_text"), "tokens"
    axes = {name: {0: "batch"}, "embeddings": {0: "batch"}}
    return export_module(module, (example,), path, [name], ["embeddings"], axes)


class OnnxClip:
    """ONNX Runtime sessions of both towers of one CLIP model.

    Attributes:
        paths: the two exports, by tower.
        providers: the image tower's execution providers, best first.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        arch: str,
        sha256: str,
        cache_dir: str | Path,
        image_size: tuple[int, int],
        context: int,
        device: torch.device,
        threads: int | None = None,
    ):
        """Open both towers, exporting the missing ones into `cache_dir` first.

        An export that does not open (a disk fault, a foreign file) is made again, once.
        """
        self.paths = {t: tower_path(cache_dir, arch, sha256, t) for t in TOWERS}
        self._sessions = {}
        for tower, path in self.paths.items():

            def export(p: Path, tower: str = tower) -> Path:
                return export_tower(model, tower, p, image_size, context)

            self._sessions[tower], providers = cached_session(path, export, device, threads)
            if tower == "image":
                self.providers = providers

    def encode_image(self, images: torch.Tensor) -> np.ndarray:
        """(B, D) float32 unit vectors for a (B, 3, H, W) float32 batch of preprocessed crops."""
        x = np.ascontiguousarray(images.detach().float().cpu().numpy())
        return self._sessions["image"].run(None, {"images": x})[0]

    def encode_text(self, tokens: torch.Tensor) -> np.ndarray:
        """(B, D) float32 unit vectors for (B, context) int64 tokens."""
        x = np.ascontiguousarray(tokens.detach().cpu().numpy().astype(np.int64))
        return self._sessions["text"].run(None, {"tokens": x})[0]
