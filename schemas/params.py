"""Everything-mode parameters: the one place their defaults and ranges are written down.

`fastsam_core.Segmenter` runs with them and `schemas.job.ModelSpec` validates a job's `model`
section with `EverythingParams.check`, so a job that passes validation is a job every actor can run.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

#: Largest model input side accepted, in pixels.
MAX_IMGSZ = 4096
#: Most masks per image accepted.
MAX_DET = 10_000


@dataclass(frozen=True)
class EverythingParams:
    """Everything-mode settings (FastSAM's defaults).

    Attributes:
        imgsz: model input size in pixels (longest side after letterboxing), a multiple of 32 in
            [32, 4096].
        conf: minimum box score, in (0, 1].
        iou: NMS IoU threshold, in (0, 1].
        max_det: most masks kept per image, in [1, 10000].
        retina: masks from the prototypes at the original resolution (True) or at the model's input
            resolution, then resized to the original (False, coarser and cheaper).
        stability_offset: logit offset for the stability score, > 0.
        chunk_pixels: bound on the float pixels held at once while decoding masks, and (times 4) on the
            mask-window pixels held before they become RLE (memory knob), >= 1.
    """

    imgsz: int = 1024
    conf: float = 0.4
    iou: float = 0.9
    max_det: int = 300
    retina: bool = True
    stability_offset: float = 1.0
    chunk_pixels: int = 16_000_000

    def __post_init__(self) -> None:
        for f in fields(self):
            self.check(f.name, getattr(self, f.name))

    @staticmethod
    def check(name: str, value) -> None:
        """Raise ValueError, saying how to fix it, when `value` is out of range for field `name`."""
        if name == "imgsz":
            if not 32 <= value <= MAX_IMGSZ:
                raise ValueError(f"imgsz must be in [32, {MAX_IMGSZ}] pixels, but got {value}")
            if value % 32:
                fix = max(round(value / 32), 1) * 32
                raise ValueError(f"imgsz must be a multiple of 32 (the model's stride), but got {value}; try {fix}")
        elif name in ("conf", "iou"):
            if not 0 < value <= 1:
                raise ValueError(f"{name} must be in (0, 1], but got {value}")
        elif name == "max_det":
            if not 1 <= value <= MAX_DET:
                raise ValueError(f"max_det must be in [1, {MAX_DET}], but got {value}")
        elif name == "stability_offset":
            if not value > 0:
                raise ValueError(f"stability_offset must be > 0, but got {value}")
        elif name == "chunk_pixels" and value < 1:
            raise ValueError(f"chunk_pixels must be >= 1, but got {value}")
