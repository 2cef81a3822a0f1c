"""Image/text embedders for scoring masks against text prompts.

`ClipEmbedder` wraps an open_clip model loaded from a local, sha256-verified file.
`fastsam_core.color_words.ColorWordEmbedder` is a deterministic stand-in whose semantics are known
exactly (a colour histogram for images, colour words for text): it lets tests prove that selection
picks the right mask, and the offline demo label shapes by colour, without real CLIP weights.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from PIL import Image

from fastsam_core.checkpoints import verify_checkpoint
from fastsam_core.model import pick_device
from schemas.errors import CheckpointError


class Embedder(Protocol):
    """Maps crops and texts into one space where cosine similarity means 'matches'.

    Attributes:
        name: identifies the model (recorded with the scores).
        logit_scale: multiplies cosine similarities before the softmax over prompts (CLIP: 100).
        dim: length of the embeddings.
    """

    name: str
    logit_scale: float
    dim: int

    def embed_images(self, crops: Iterable[np.ndarray]) -> np.ndarray:
        """(N, D) float32 unit vectors for N RGB uint8 crops (H_i, W_i, 3), consumed in order.

        `crops` may be a generator: an embedder holds only the crops of one forward pass at a time.
        """
        ...

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """(P, D) float32 unit vectors for P texts."""
        ...


class ClipEmbedder:
    """An open_clip model: architecture by name, weights from a local sha256-pinned file.

    Text embeddings are cached per prompt list; images are embedded in chunks of `chunk_size`, the
    next chunk prepared while the model runs on this one.
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
            raise CheckpointError(
                f"CLIP architecture {arch!r} is unknown to open_clip; pick one of open_clip.list_models()"
            )
        self.sha256: str | None = None  # of the weights file, once verified
        if weights is not None:
            if sha256 is None and not allow_unpinned:
                raise CheckpointError(
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
        self.dim = int(self.model.visual.output_dim)
        self._text_cache: dict[tuple[str, ...], np.ndarray] = {}
        self.arch = arch
        self.onnx = None  # fastsam_core.onnx_clip.OnnxClip once `use_onnxruntime` ran

    @property
    def runtime(self) -> str:
        """What runs the towers: "torch" or "onnxruntime"."""
        return "torch" if self.onnx is None else "onnxruntime"

    def use_onnxruntime(self, cache_dir: str | Path, threads: int | None = None) -> ClipEmbedder:
        """Run both towers on ONNX Runtime from now on, exported into `cache_dir` on first use.

        Exports are named by the weights' sha256 (random weights: by the hash of their values). The
        torch model is released once the sessions are open (`model` becomes None), so the weights
        are held once.

        Args:
            cache_dir: folder of exports.
            threads: CPU threads of each session; None = ONNX Runtime's default.

        Raises:
            ValueError: the model runs in float16 (the exports are float32).
        """
        from fastsam_core.onnx_clip import OnnxClip, weights_id

        if self.half:
            raise ValueError("the onnxruntime runtime runs float32; set half to false or use the torch runtime")
        size = self.model.visual.image_size
        size = (size, size) if isinstance(size, int) else tuple(size)
        self.onnx = OnnxClip(
            self.model,
            self.arch,
            self.sha256 or weights_id(self.model),
            cache_dir,
            size,
            int(self.model.context_length),
            self.device,
            threads,
        )
        self._text_cache.clear()
        self.model = None  # the sessions hold the weights now: do not keep a second copy
        return self

    def embed_images(self, crops: Iterable[np.ndarray]) -> np.ndarray:
        """See `Embedder.embed_images`.

        Two stages overlap: a helper thread cuts and resizes the next `chunk_size` crops (pulling them
        from `crops`, so mask decoding and cropping run there too) while the model runs on this chunk.
        """
        dim = self.dim
        out = []
        chunks = self._inputs(iter(crops))
        with ThreadPoolExecutor(1, thread_name_prefix="clip-prep") as prep:
            nxt = prep.submit(next, chunks, None)
            while (x := nxt.result()) is not None:
                nxt = prep.submit(next, chunks, None)
                out.append(self._forward(x))
        return np.concatenate(out) if out else np.zeros((0, dim), np.float32)

    @torch.inference_mode()
    def _forward(self, x: torch.Tensor) -> np.ndarray:
        if self.onnx is not None:
            return self.onnx.encode_image(x)
        x = x.to(self.device, torch.float16 if self.half else torch.float32)
        return self.model.encode_image(x, normalize=True).float().cpu().numpy()

    def _inputs(self, crops: Iterator[np.ndarray]) -> Iterator[torch.Tensor]:
        """(n, 3, S, S) float32 model inputs, `chunk_size` crops at a time, equal to open_clip's preprocess.

        Each crop is preprocessed as it arrives, so one full-resolution crop is held at a time (a
        mask of a 24 MP photo crops to up to 72 MB; its model input is 0.6 MB).
        """
        while chunk := [self.preprocess(Image.fromarray(c)) for c in itertools.islice(crops, self.chunk_size)]:
            yield torch.stack(chunk)

    @torch.inference_mode()
    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """See `Embedder.embed_texts`; computed once per distinct prompt list."""
        key = tuple(texts)
        if key not in self._text_cache:
            tokens = self.tokenizer(list(texts))
            if self.onnx is not None:
                self._text_cache[key] = self.onnx.encode_text(tokens)
            else:
                tokens = tokens.to(self.device)
                self._text_cache[key] = self.model.encode_text(tokens, normalize=True).float().cpu().numpy()
        return self._text_cache[key]
