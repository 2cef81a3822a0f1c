"""fastsam_core: FastSAM everything mode, prompt selection, CLIP scoring and RLE, as a pure library.

Images in (RGB uint8 arrays), `MaskBatch` objects out. No object storage, Ray or Prefect here.
"""

import importlib
from typing import TYPE_CHECKING

#: Public names and the submodule that defines each. They are imported on first use, so a process
#: that needs only checkpoint hashing (the flow's driver) does not load torch (~0.7 GB).
_EXPORTS = {
    "MaskBatch": "batch",
    "KNOWN_CHECKPOINTS": "checkpoints",
    "TINY_CHECKPOINT": "checkpoints",
    "CheckpointError": "checkpoints",
    "verify_checkpoint": "checkpoints",
    "ClipEmbedder": "embedders",
    "ColorWordEmbedder": "color_words",
    "Embedder": "embedders",
    "EverythingParams": "everything",
    "Segmenter": "everything",
    "FastSAMModel": "model",
    "NO_MASK": "prompts",
    "best_mask_per_prompt": "prompts",
    "label_instances": "prompts",
    "merge_by_points": "prompts",
    "select_by_boxes": "prompts",
    "select_by_points": "prompts",
    "score_images": "scoring",
    "score_masks": "scoring",
    "with_labels": "prompts",
}


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'fastsam_core' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"fastsam_core.{_EXPORTS[name]}"), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


if TYPE_CHECKING:
    from fastsam_core.batch import MaskBatch
    from fastsam_core.checkpoints import KNOWN_CHECKPOINTS, TINY_CHECKPOINT, verify_checkpoint
    from fastsam_core.color_words import ColorWordEmbedder
    from fastsam_core.embedders import ClipEmbedder, Embedder
    from fastsam_core.everything import EverythingParams, Segmenter
    from fastsam_core.model import FastSAMModel
    from fastsam_core.prompts import (
        NO_MASK,
        best_mask_per_prompt,
        label_instances,
        merge_by_points,
        select_by_boxes,
        select_by_points,
        with_labels,
    )
    from fastsam_core.scoring import score_images, score_masks
    from schemas.errors import CheckpointError

__all__ = [
    "KNOWN_CHECKPOINTS",
    "NO_MASK",
    "TINY_CHECKPOINT",
    "CheckpointError",
    "ClipEmbedder",
    "ColorWordEmbedder",
    "Embedder",
    "EverythingParams",
    "FastSAMModel",
    "MaskBatch",
    "Segmenter",
    "best_mask_per_prompt",
    "label_instances",
    "merge_by_points",
    "score_images",
    "score_masks",
    "select_by_boxes",
    "select_by_points",
    "verify_checkpoint",
    "with_labels",
]
