"""The model stack: FastSAM, the text embedder and the labelling rules, built once from a job's settings.

`build_stack` is the one place that turns `ModelSpec`/`ClipSpec`/`SelectionSpec` into loaded models
and `fastsam_core` parameters; the Labeler, the Ray Data callable and `fastsam-label segment` all
use it, so they run with the same defaults, ranges and rules.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from fastsam_core import TINY_CHECKPOINT, EverythingParams, FastSAMModel, MaskBatch, Segmenter
from fastsam_core.embedders import Embedder
from fastsam_core.model import pick_device
from fastsam_core.prompts import with_labels
from fastsam_core.scoring import score_images
from schemas.job import ClipSpec, Job, ModelSpec, SelectionSpec, StorageSpec
from workers.storage.weights import cache_dir, resolve_weights

log = logging.getLogger(__name__)


def machine_cpus() -> int:
    """CPUs this process may run on (its affinity, not the machine's count)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@dataclass
class ModelStack:
    """Loaded models and the rules that turn their outputs into labelled masks.

    Attributes:
        segmenter: FastSAM everything mode with the job's parameters.
        embedder: scores masks against `prompts`; None when there are no prompts and no embeddings are kept.
        prompts, negatives: positive and vetoing texts (the score columns' order).
        selection: how scores become labels.
        min_area: masks of this many pixels or fewer are not scored.
        max_masks: most masks scored per image (the best by score x stability); None = all.
        threads: torch CPU threads while labelling (a fixed count per job keeps float sums, and so
            scores, equal bit for bit in every actor and in a direct call).
        keep_embeddings: `score` also returns each scored mask's CLIP embedding ("clip_embedding").
    """

    segmenter: Segmenter
    embedder: Embedder | None
    prompts: tuple[str, ...]
    negatives: tuple[str, ...]
    selection: SelectionSpec
    min_area: int
    max_masks: int | None
    threads: int
    keep_embeddings: bool = False

    @property
    def models(self) -> dict[str, list[str]]:
        """sha256 of the loaded models by role (the colour-word stand-in has none)."""
        out = {"fastsam": [self.segmenter.model.sha256]}
        clip_sha = getattr(self.embedder, "sha256", None)
        if clip_sha:
            out["clip"] = [clip_sha]
        return out

    @property
    def model_sha256(self) -> str:
        """sha256 of the FastSAM checkpoint."""
        return self.segmenter.model.sha256

    @property
    def clip_name(self) -> str | None:
        """The embedder's name as recorded in the images table; None without prompts."""
        return None if self.embedder is None else self.embedder.name

    @contextlib.contextmanager
    def threads_set(self) -> Iterator[None]:
        """Torch's CPU threads = `threads` inside the block, restored afterwards (CPU models only)."""
        import torch

        if self.segmenter.model.device.type != "cpu":
            yield
            return
        before = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            yield
        finally:
            torch.set_num_threads(before)

    def segment(self, images: Sequence[np.ndarray]) -> list[MaskBatch]:
        """Everything mode on a batch of (H, W, 3) uint8 RGB images: one MaskBatch each."""
        return self.segmenter(images)

    def score(self, images: Sequence[np.ndarray], batches: Sequence[MaskBatch]) -> list[MaskBatch]:
        """The batches with "clip_cosine", "clip_prob", "label" and "label_score" columns.

        See `fastsam_core.scoring.score_images` and `fastsam_core.prompts.with_labels`; unchanged
        without prompts. The crops of all the images share the embedder's forward passes.
        """
        if self.embedder is None:
            return list(batches)
        scored = score_images(
            images, batches, self.embedder, self.prompts, self.negatives, self.min_area, self.max_masks,
            keep_embeddings=self.keep_embeddings,
        )  # fmt: skip
        if not self.prompts:
            return scored
        sel = self.selection
        return [with_labels(b, len(self.prompts), sel.mode, sel.threshold) for b in scored]

    def label(self, images: Sequence[np.ndarray]) -> list[MaskBatch]:
        """`segment`, then `score`."""
        return self.score(images, self.segment(images))


def build_stack(
    model: ModelSpec,
    clip: ClipSpec | None = None,
    prompts: Sequence[str] = (),
    negatives: Sequence[str] = (),
    selection: SelectionSpec | None = None,
    storage: StorageSpec | None = None,
    cpus: float | None = None,
    keep_embeddings: bool = False,
) -> ModelStack:
    """Fetch (s3://), verify and load the models a job's settings name.

    Args:
        model: the FastSAM checkpoint and everything-mode parameters.
        clip: the text embedder; loaded only when there are `prompts`.
        prompts: texts to score every mask against.
        negatives: texts that veto a label.
        selection: how scores become labels (default: instances at 0.5).
        storage: how to reach s3:// weights.
        cpus: CPUs the models may use (torch threads = its ceiling); None = this process's CPUs.
        keep_embeddings: return each scored mask's CLIP embedding (CLIP is loaded even without prompts).

    Raises:
        fastsam_core.CheckpointError: a file's hash differs from its pin, or it is not a FastSAM model.
        schemas.errors.StoreError: s3:// weights cannot be read.
    """
    storage = storage or StorageSpec()
    clip = clip or ClipSpec()
    ckpt = TINY_CHECKPOINT
    if model.checkpoint:
        ckpt = resolve_weights(model.checkpoint, model.sha256, model.allow_unpinned, storage)
    threads = max(1, math.ceil(cpus if cpus is not None else machine_cpus()))
    runtime = resolve_runtime(model)
    half = model.half if runtime == "torch" else False
    net = FastSAMModel.load(ckpt, model.sha256, model.allow_unpinned, device=model.device, half=half)
    if runtime == "onnxruntime":
        net = net.use_onnxruntime(cache_dir() / "onnx", threads)
    params = EverythingParams(
        imgsz=model.imgsz or net.default_imgsz,
        conf=model.conf,
        iou=model.iou,
        max_det=model.max_det,
        retina=model.retina,
    )
    embedder = embedder_for(clip, model, storage, threads) if prompts or keep_embeddings else None
    return ModelStack(
        segmenter=Segmenter(net, params),
        embedder=embedder,
        prompts=tuple(prompts),
        negatives=tuple(negatives),
        selection=selection or SelectionSpec(),
        min_area=clip.min_area,
        max_masks=clip.max_masks,
        threads=threads,
        keep_embeddings=keep_embeddings,
    )


def resolve_runtime(model: ModelSpec, asked: str | None = None) -> str:
    """What runs a network on this machine: "torch" or "onnxruntime".

    `asked` (default `model.runtime`), with "auto" made "onnxruntime" on the CPU and "torch" on CUDA
    or when `model.half` asks for float16. CLIP passes its own `clip.runtime` and follows `model`'s
    device and precision.
    """
    asked = asked or model.runtime
    if asked != "auto":
        return asked
    return "torch" if model.half or pick_device(model.device).type != "cpu" else "onnxruntime"


def stack_for(job: Job) -> ModelStack:
    """The stack for a whole job.

    Torch threads: `compute.cpus_per_actor`, else an equal share of this process's CPUs per actor
    (what `workers.ray.pool` reserves on a local cluster).
    """
    return build_stack(
        job.model,
        job.clip,
        job.prompts,
        job.negative_prompts,
        job.selection,
        job.storage,
        job.compute.actor_cpus(machine_cpus()),
        job.clip.keep_embeddings,
    )


def embedding_dim(clip: ClipSpec) -> int:
    """Length of the embeddings `clip` makes, from its architecture's configuration (no weights loaded)."""
    if clip.arch == "color-words":
        from fastsam_core.color_words import ColorWordEmbedder

        return ColorWordEmbedder.dim
    import open_clip

    return int(open_clip.get_model_config(clip.arch)["embed_dim"])


def embedder_for(clip: ClipSpec, model: ModelSpec, storage: StorageSpec, threads: int | None = None) -> Embedder:
    """The verified embedder `clip` names (the device and precision follow `model`'s).

    With `clip.runtime: auto` resolved to onnxruntime, an export that fails leaves the embedder on
    torch (logged); with `clip.runtime: onnxruntime` it raises.

    Args:
        clip: the embedder's architecture, weights and runtime.
        model: whose device and precision it follows.
        storage: how to reach s3:// weights.
        threads: CPU threads of its ONNX Runtime sessions (`clip.runtime`); None = all cores.
    """
    if clip.arch == "color-words":
        from fastsam_core.color_words import ColorWordEmbedder

        return ColorWordEmbedder()
    from fastsam_core import ClipEmbedder

    weights = resolve_weights(clip.weights, clip.sha256, clip.allow_unpinned, storage)
    runtime = resolve_runtime(model, clip.runtime)
    embedder = ClipEmbedder(
        clip.arch,
        weights,
        sha256=clip.sha256,
        allow_unpinned=clip.allow_unpinned,
        device=model.device,
        half=model.half if runtime == "torch" else False,
        chunk_size=clip.batch_size,
    )
    if runtime == "torch":
        return embedder
    try:
        return embedder.use_onnxruntime(cache_dir() / "onnx", threads)
    except Exception as e:
        if clip.runtime != "auto":
            raise
        # An architecture ONNX cannot export still labels, on torch (same embeddings to ~1e-6).
        log.warning(
            "CLIP %s runs on torch: its ONNX export failed (%s); set clip.runtime: torch to skip it", clip.arch, e
        )
        return embedder
