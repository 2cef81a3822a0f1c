"""Image/text embedders for scoring masks against text prompts.

`ClipEmbedder` wraps an open_clip model loaded from a local, sha256-verified file.
`ColorWordEmbedder` is a deterministic stand-in whose semantics are known exactly (a colour
histogram for images, colour words for text): it lets tests prove that selection picks the right
mask, and the offline demo label shapes by colour, without real CLIP weights.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from PIL import Image

from fastsam_core.checkpoints import verify_checkpoint
from fastsam_core.model import pick_device
from fastsam_core.synthetic import PALETTE


class Embedder(Protocol):
    """Maps crops and texts into one space where cosine similarity means 'matches'.

    Attributes:
        name: identifies the model (recorded with the scores).
        logit_scale: multiplies cosine similarities before the softmax over prompts (CLIP: 100).
    """

    name: str
    logit_scale: float

    def embed_images(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        """(N, D) float32 unit vectors for N RGB uint8 crops (H_i, W_i, 3)."""
        ...

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """(P, D) float32 unit vectors for P texts."""
        ...


def _unit(x: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.where(n > 0, n, 1)).astype(np.float32)


class ColorWordEmbedder:
    """Deterministic stand-in: images by the share of pixels of each `PALETTE` colour, texts by colour words.

    A pixel counts for a colour when it lies within `radius` (RGB distance) of it; other pixels
    (background, fill) count for nothing. A text's vector has a 1 for each colour word it contains.
    """

    name = "color-words"
    logit_scale = 10.0

    def __init__(self, radius: float = 60.0):
        self.radius = radius
        self._colors = np.array(list(PALETTE.values()), np.float32)

    def embed_images(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        """See `Embedder.embed_images`."""
        out = np.zeros((len(crops), len(self._colors)), np.float32)
        cc = (self._colors.astype(np.float64) ** 2).sum(1)
        for i, c in enumerate(crops):
            px = c.reshape(-1, 3).astype(np.float64)
            # Squared distances as |p|^2 - 2 p.c + |c|^2: one (N, 3) x (3, K) product instead of an (N, K, 3) array.
            d2 = (px * px).sum(1)[:, None] - 2 * (px @ self._colors.T.astype(np.float64)) + cc[None]
            best = d2.argmin(1)
            near = d2[np.arange(len(px)), best] <= self.radius**2
            out[i] = np.bincount(best[near], minlength=len(self._colors))
        return _unit(out)

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """See `Embedder.embed_texts`."""
        names = list(PALETTE)
        out = np.zeros((len(texts), len(names)), np.float32)
        for i, t in enumerate(texts):
            words = t.lower().replace(",", " ").split()
            for j, n in enumerate(names):
                out[i, j] = float(n in words)
        return _unit(out)


class ClipEmbedder:
    """An open_clip model: architecture by name, weights from a local sha256-pinned file.

    Text embeddings are cached per prompt list; images are embedded in chunks of `chunk_size`.
    """

    def __init__(
        self,
        arch: str = "ViT-B-32",
        weights: str | Path | None = None,
        sha256: str | None = None,
        allow_unpinned: bool = False,
        device: str | torch.device | None = None,
        half: bool | None = None,
        chunk_size: int = 64,
    ):
        """Load the model.

        Args:
            arch: an open_clip architecture name (`open_clip.list_models()`).
            weights: local open_clip checkpoint (state dict, .pt/.bin/.safetensors); None gives random
                weights (for tests only: the scores then mean nothing).
            sha256: pinned hash of `weights`; required unless `allow_unpinned`.
            allow_unpinned: load unpinned weights.
            device: CUDA when present by default.
            half: float16 on CUDA by default.
            chunk_size: crops per forward pass (bounds memory).
        """
        import open_clip

        if arch not in open_clip.list_models():
            raise ValueError(f"CLIP architecture {arch!r} is unknown to open_clip; pick one of open_clip.list_models()")
        self.sha256: str | None = None  # of the weights file, once verified
        if weights is not None:
            if sha256 is None and not allow_unpinned:
                raise ValueError(
                    f"CLIP weights {weights} have no pinned sha256; pin one (sha256=...) or allow unpinned files"
                )
            self.sha256 = verify_checkpoint(weights, sha256, allow_unpinned=True)
        self.device = pick_device(device)
        self.half = self.device.type == "cuda" if half is None else bool(half)
        self.model, _, self.preprocess = open_clip.create_model_and_transforms(
            arch,
            pretrained=str(weights) if weights is not None else None,
            device=self.device,
            precision="fp16" if self.half else "fp32",
        )
        self.model.eval()
        self.tokenizer = open_clip.get_tokenizer(arch)
        self.name = f"open_clip:{arch}"
        self.logit_scale = float(self.model.logit_scale.detach().exp().clamp(max=100)) if weights is not None else 100.0
        self.chunk_size = chunk_size
        self._text_cache: dict[tuple[str, ...], np.ndarray] = {}

    @torch.inference_mode()
    def embed_images(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        """See `Embedder.embed_images`."""
        dim = self.model.visual.output_dim
        out = []
        for s in range(0, len(crops), self.chunk_size):
            x = torch.stack([self.preprocess(Image.fromarray(c)) for c in crops[s : s + self.chunk_size]])
            x = x.to(self.device, torch.float16 if self.half else torch.float32)
            out.append(self.model.encode_image(x, normalize=True).float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, dim), np.float32)

    @torch.inference_mode()
    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """See `Embedder.embed_texts`; computed once per distinct prompt list."""
        key = tuple(texts)
        if key not in self._text_cache:
            tokens = self.tokenizer(list(texts)).to(self.device)
            self._text_cache[key] = self.model.encode_text(tokens, normalize=True).float().cpu().numpy()
        return self._text_cache[key]
