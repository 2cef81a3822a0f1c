"""A shard's labelled tables as one actor made them, joined from parts, and the summary they count."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from schemas.manifest import ShardSummary
from schemas.stats import MaskStats
from schemas.tables import IMAGES_SCHEMA, MASKS_SCHEMA, PROMPTS_SCHEMA, ImageStatus


@dataclass
class ShardPart:
    """The tables of a run of consecutive objects of one shard, as one actor labelled them.

    Attributes:
        images, masks: the images and masks table rows, in object order.
        prompts: the prompts table rows, or None when the job has no prompt table.
        stage_seconds: wall seconds per stage summed over the part's images.
        models: sha256 of the models that labelled it, by role ("fastsam", "clip").
        worker: host:pid of the actor.
        embeddings: the embeddings table rows, or None when the job keeps no embeddings.
    """

    images: pa.Table
    masks: pa.Table
    prompts: pa.Table | None
    stage_seconds: dict[str, float]
    models: dict[str, list[str]]
    worker: str
    embeddings: pa.Table | None = None

    def tables(self) -> dict[str, pa.Table]:
        """The part's tables by name (prompts and embeddings only when the job writes them)."""
        out = {"images": self.images, "masks": self.masks}
        if self.prompts is not None:
            out["prompts"] = self.prompts
        if self.embeddings is not None:
            out["embeddings"] = self.embeddings
        return out


def join_parts(parts: Sequence[ShardPart]) -> ShardPart:
    """One part from consecutive parts, in order."""
    prompts = [p.prompts for p in parts if p.prompts is not None]
    embeddings = [p.embeddings for p in parts if p.embeddings is not None]
    stages: dict[str, float] = {}
    models: dict[str, set[str]] = {}
    for p in parts:
        for k, v in p.stage_seconds.items():
            stages[k] = stages.get(k, 0.0) + v
        for role, hashes in p.models.items():
            models.setdefault(role, set()).update(hashes)
    return ShardPart(
        images=pa.concat_tables([IMAGES_SCHEMA.empty_table(), *(p.images for p in parts)]),
        masks=pa.concat_tables([MASKS_SCHEMA.empty_table(), *(p.masks for p in parts)]),
        prompts=pa.concat_tables([PROMPTS_SCHEMA.empty_table(), *prompts]) if prompts else None,
        stage_seconds=stages,
        models={role: sorted(h) for role, h in models.items()},
        worker=",".join(sorted({p.worker for p in parts if p.worker})),
        embeddings=pa.concat_tables(embeddings) if embeddings else None,
    )


def shard_summary(run_id: str, shard_id: int, attempt_id: str, part: ShardPart, seconds: float) -> ShardSummary:
    """The summary of a shard attempt, counted from its tables (`seconds`: wall time so far)."""
    status = part.images["status"]
    counts = pc.value_counts(status).to_pylist() if len(status) else []
    by_status = {c["values"]: c["counts"] for c in counts}
    labelled = by_status.pop(ImageStatus.OK.value, 0)
    return ShardSummary(
        run_id=run_id,
        shard_id=shard_id,
        attempt_id=attempt_id,
        objects=part.images.num_rows,
        labelled=labelled,
        masks=part.masks.num_rows,
        prompts=part.prompts.num_rows if part.prompts is not None else 0,
        embeddings=part.embeddings.num_rows if part.embeddings is not None else 0,
        errors_by_kind=dict(sorted(by_status.items())),
        stage_seconds=dict(part.stage_seconds),
        seconds=seconds,
        models=part.models,
        mask_stats=MaskStats.of_masks(part.masks),
        worker=part.worker,
    )
