"""`MaskBatch`: the masks of one image as equal-length columns.

Every step (segmentation, CLIP scoring, prompt selection) takes and returns a MaskBatch. Indexing
returns a new batch and never mutates; `mask_ids` travel with their rows, so selecting by text,
point or box after any filtering still names the right mask.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from fastsam_core import rle as rle_utils


def _check_rows(name: str, arr: np.ndarray, n: int, trailing: tuple[int, ...] = ()) -> None:
    if arr.ndim != 1 + len(trailing) or arr.shape[0] != n or (trailing and arr.shape[1:] != trailing):
        raise ValueError(f"{name} must have shape {(n, *trailing)}, but got shape {arr.shape}")


@dataclass(frozen=True)
class MaskBatch:
    """The masks found in one image.

    Attributes:
        image_hw: (height, width) of the image in pixels, after EXIF orientation.
        boxes_xyxy: (N, 4) float32 detector boxes, XYXY in pixels of the image.
        scores: (N,) float32 detector confidence (the box score).
        rles: N COCO RLE dicts ({"size": [h, w], "counts": bytes}).
        areas: (N,) int64 mask areas in pixels.
        stability: (N,) float32 stability score in [0, 1]: IoU of the mask logits thresholded at
            +offset and at -offset (segment-anything's AMG); a mask-quality estimate.
        mask_ids: (N,) int32 position of each mask in the image's unfiltered mask list, in score order.
        columns: extra per-row arrays, each with N rows (for example CLIP similarities (N, P)).
    """

    image_hw: tuple[int, int]
    boxes_xyxy: np.ndarray
    scores: np.ndarray
    rles: list = field(repr=False)
    areas: np.ndarray
    stability: np.ndarray
    mask_ids: np.ndarray
    columns: Mapping[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.rles)
        conv = {
            "boxes_xyxy": np.asarray(self.boxes_xyxy, np.float32).reshape(-1, 4) if n == 0 else self.boxes_xyxy,
            "scores": self.scores,
            "areas": self.areas,
            "stability": self.stability,
            "mask_ids": self.mask_ids,
        }
        dtypes = {"boxes_xyxy": np.float32, "scores": np.float32, "areas": np.int64, "stability": np.float32}
        for name, value in conv.items():
            arr = np.asarray(value, dtypes.get(name, np.int32))
            _check_rows(name, arr, n, (4,) if name == "boxes_xyxy" else ())
            object.__setattr__(self, name, arr)
        cols = {}
        for name, value in self.columns.items():
            arr = np.asarray(value)
            if arr.ndim == 0 or arr.shape[0] != n:
                raise ValueError(f"column {name!r} must have {n} rows, but got shape {arr.shape}")
            cols[name] = arr
        object.__setattr__(self, "columns", cols)
        object.__setattr__(self, "rles", list(self.rles))
        h, w = self.image_hw
        object.__setattr__(self, "image_hw", (int(h), int(w)))
        for r in self.rles:
            if list(r["size"]) != [h, w]:
                raise ValueError(f"every RLE must have size [{h}, {w}] (the image), but got {r['size']}")

    @classmethod
    def empty(cls, image_hw: tuple[int, int]) -> MaskBatch:
        """A batch with no masks."""
        z = np.zeros(0)
        return cls(image_hw, np.zeros((0, 4)), z, [], z, z, z)

    def __len__(self) -> int:
        return len(self.rles)

    def __getitem__(self, index: int | slice | Sequence[int] | np.ndarray) -> MaskBatch:
        """Rows by int, slice, integer array or boolean array of length N; always a new batch."""
        if isinstance(index, (int, np.integer)):
            index = [int(index)]
        idx = np.arange(len(self))[index]
        return replace(
            self,
            boxes_xyxy=self.boxes_xyxy[idx],
            scores=self.scores[idx],
            rles=[self.rles[i] for i in idx],
            areas=self.areas[idx],
            stability=self.stability[idx],
            mask_ids=self.mask_ids[idx],
            columns={k: v[idx] for k, v in self.columns.items()},
        )

    def with_columns(self, **columns: np.ndarray) -> MaskBatch:
        """A new batch with columns added or replaced."""
        return replace(self, columns={**self.columns, **columns})

    def by_mask_id(self, mask_ids: Sequence[int] | np.ndarray) -> MaskBatch:
        """Rows whose mask_id is in `mask_ids`, in the order given; unknown ids raise KeyError."""
        pos = {int(m): i for i, m in enumerate(self.mask_ids)}
        try:
            return self[np.array([pos[int(m)] for m in mask_ids], np.int64)]
        except KeyError as e:
            raise KeyError(f"mask_id {e.args[0]} is not in this batch") from None

    @staticmethod
    def cat(batches: Sequence[MaskBatch]) -> MaskBatch:
        """Concatenate batches of the same image (same image_hw and the same column names)."""
        if not batches:
            raise ValueError("cat needs at least one batch")
        hw = batches[0].image_hw
        names = set(batches[0].columns)
        for b in batches[1:]:
            if b.image_hw != hw:
                raise ValueError(f"all batches must have image_hw {hw}, but got {b.image_hw}")
            if set(b.columns) != names:
                raise ValueError(f"all batches must have columns {sorted(names)}, but got {sorted(b.columns)}")
        return MaskBatch(
            hw,
            np.concatenate([b.boxes_xyxy for b in batches]),
            np.concatenate([b.scores for b in batches]),
            [r for b in batches for r in b.rles],
            np.concatenate([b.areas for b in batches]),
            np.concatenate([b.stability for b in batches]),
            np.concatenate([b.mask_ids for b in batches]),
            {k: np.concatenate([b.columns[k] for b in batches]) for k in names},
        )

    def bboxes_xywh(self) -> np.ndarray:
        """(N, 4) float64 tight boxes of the masks themselves, XYWH pixels (COCO `bbox`)."""
        return rle_utils.bbox_xywh(self.rles)

    def masks(self) -> np.ndarray:
        """(N, H, W) bool dense masks. For tests and small images: costs N * H * W bytes."""
        h, w = self.image_hw
        if not self.rles:
            return np.zeros((0, h, w), bool)
        return np.stack([rle_utils.decode(r) for r in self.rles]).astype(bool)
