"""fastsam_core: FastSAM everything mode, prompt selection, CLIP scoring and RLE, as a pure library.

Images in (RGB uint8 arrays), `MaskBatch` objects out. No object storage, Ray or Prefect here.
"""

from fastsam_core.batch import MaskBatch
from fastsam_core.checkpoints import KNOWN_CHECKPOINTS, TINY_CHECKPOINT, CheckpointError, verify_checkpoint
from fastsam_core.embedders import ClipEmbedder, ColorWordEmbedder, Embedder
from fastsam_core.everything import EverythingParams, Segmenter
from fastsam_core.model import FastSAMModel
from fastsam_core.prompts import (
    NO_MASK,
    best_mask_per_prompt,
    label_instances,
    merge_by_points,
    select_by_boxes,
    select_by_points,
)
from fastsam_core.scoring import score_masks

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
    "score_masks",
    "select_by_boxes",
    "select_by_points",
    "verify_checkpoint",
]
