"""Per-shard summaries and the run manifest (JSON documents next to the tables).

`ShardSummary` is what labelling one shard returns and what `runs/{run_id}/done/shard-N.json`
holds; it is small on purpose (counts and timings, never keys or bytes), so it can travel through
Ray and Prefect. `RunManifest` is written once, at commit, to `runs/{run_id}/manifest.json`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from schemas.tables import SCHEMA_VERSION


class ShardSummary(BaseModel):
    """The outcome of one shard.

    Attributes:
        run_id, shard_id: which shard.
        objects: source objects in the shard (= rows written to the images table).
        labelled: objects labelled (status ok).
        masks: rows written to the masks table.
        prompts: rows written to the prompts table.
        errors_by_kind: failed objects per error kind.
        stage_seconds: wall seconds per stage summed over the shard's images
            (read, decode, segment, score) plus write (the shard's table uploads).
        seconds: wall seconds of the whole shard.
        worker: host and process that did the work (for diagnosis only; outputs do not depend on it).
    """

    model_config = ConfigDict(frozen=True)

    run_id: str
    shard_id: int
    objects: int
    labelled: int
    masks: int
    prompts: int = 0
    errors_by_kind: dict[str, int] = Field(default_factory=dict)
    stage_seconds: dict[str, float] = Field(default_factory=dict)
    seconds: float = 0.0
    worker: str = ""


class ShardState(BaseModel):
    """A shard in the manifest."""

    shard_id: int
    objects: int
    state: str  # "done" or "failed"
    summary: ShardSummary | None = None
    error: str | None = None


class RunManifest(BaseModel):
    """Everything needed to understand a finished run without reading its tables.

    Attributes:
        schema_version: of the tables this run wrote.
        run_id: the run.
        job: the validated job, as a dict.
        prompts: positive then negative prompts: the order of the CLIP score lists.
        models: {"fastsam": {"name", "sha256"}, "clip": {"name", "sha256"}}.
        code_version: the fastsam-label version that ran.
        shards: every shard and its state.
        counts: objects, labelled, masks, prompts, failed.
        errors_by_kind: failed objects per error kind.
        stage_seconds: summed per-stage seconds over all shards.
        started_at, finished_at: UTC times.
    """

    schema_version: str = SCHEMA_VERSION
    run_id: str
    job: dict[str, Any]
    prompts: list[str]
    models: dict[str, dict[str, str | None]]
    code_version: str
    shards: list[ShardState]
    counts: dict[str, int]
    errors_by_kind: dict[str, int]
    stage_seconds: dict[str, float]
    started_at: datetime
    finished_at: datetime
