"""Distributions of a shard's masks in fixed bins, so that shards add up to the run's (for the report).

Each shard's summary carries its `MaskStats`; the run report merges them instead of reading every
masks table of the run again.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict, Field

#: Equal bins over [0, 1] for scores and stability.
UNIT_BINS = 20
#: Bins of log10(area in pixels): [0, 0.25), [0.25, 0.5), ... [7.75, 8]; 1 px and empty masks in the first.
AREA_BINS, AREA_STEP = 32, 0.25
#: Images kept per shard as candidates for "lowest mean stability".
LOWEST = 8


def _counts(values: np.ndarray, bins: int, top: float) -> list[int]:
    index = np.clip((values / top * bins).astype(np.int64), 0, bins - 1)
    return np.bincount(index, minlength=bins).tolist()


class MaskStats(BaseModel):
    """Distributions of a set of masks.

    Attributes:
        score: masks per detector-score bin (UNIT_BINS equal bins over [0, 1]).
        stability: masks per stability bin (UNIT_BINS equal bins over [0, 1]).
        log10_area: masks per log10(area) bin (AREA_BINS bins of AREA_STEP from 0).
        labels: masks per label; "" counts the unlabelled.
        lowest_stability: (image id, mean stability of its masks) of the images with the lowest mean,
            at most LOWEST, lowest first.
        label_examples: per label, (image id, label score) of the mask with the highest label score.
    """

    model_config = ConfigDict(frozen=True)

    score: list[int] = Field(default_factory=lambda: [0] * UNIT_BINS)
    stability: list[int] = Field(default_factory=lambda: [0] * UNIT_BINS)
    log10_area: list[int] = Field(default_factory=lambda: [0] * AREA_BINS)
    labels: dict[str, int] = Field(default_factory=dict)
    lowest_stability: list[tuple[str, float]] = Field(default_factory=list)
    label_examples: dict[str, tuple[str, float]] = Field(default_factory=dict)

    @classmethod
    def of_masks(cls, masks: pa.Table) -> MaskStats:
        """The stats of a masks table (MASKS_SCHEMA)."""
        if masks.num_rows == 0:
            return cls()
        area = masks["area"].to_numpy().astype(np.float64)
        labels = pc.fill_null(masks["label"], "")
        per_image = masks.group_by("image_id").aggregate([("stability", "mean")]).sort_by("stability_mean")
        examples = {}
        labelled = masks.filter(pc.is_valid(masks["label"])).sort_by([("label_score", "descending")])
        for row in labelled.select(["label", "image_id", "label_score"]).to_pylist():
            examples.setdefault(row["label"], (row["image_id"], round(row["label_score"], 4)))
        return cls(
            score=_counts(masks["score"].to_numpy(), UNIT_BINS, 1.0),
            stability=_counts(masks["stability"].to_numpy(), UNIT_BINS, 1.0),
            log10_area=_counts(np.log10(np.maximum(area, 1.0)), AREA_BINS, AREA_BINS * AREA_STEP),
            labels={r["values"]: r["counts"] for r in pc.value_counts(labels).to_pylist()},
            lowest_stability=[
                (r["image_id"], round(r["stability_mean"], 4)) for r in per_image.slice(0, LOWEST).to_pylist()
            ],
            label_examples=examples,
        )

    def merged(self, other: MaskStats) -> MaskStats:
        """The stats of both sets of masks."""
        labels = dict(self.labels)
        for k, v in other.labels.items():
            labels[k] = labels.get(k, 0) + v
        examples = dict(self.label_examples)
        for k, v in other.label_examples.items():
            if k not in examples or v[1] > examples[k][1]:
                examples[k] = v
        return MaskStats(
            score=[a + b for a, b in zip(self.score, other.score, strict=True)],
            stability=[a + b for a, b in zip(self.stability, other.stability, strict=True)],
            log10_area=[a + b for a, b in zip(self.log10_area, other.log10_area, strict=True)],
            labels=labels,
            lowest_stability=sorted([*self.lowest_stability, *other.lowest_stability], key=lambda t: t[1])[:LOWEST],
            label_examples=examples,
        )
