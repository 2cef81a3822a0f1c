"""The small JSON documents beside the tables: shard summaries, shard markers, run summaries, the manifest.

`ShardSummary` is what labelling one shard returns; it is small on purpose (counts and timings,
never keys or bytes), so it can travel through Ray and Prefect. `ShardMarker` is the shard's
`done/shard-N.json`: the attempt that counts, its files and its summary. `RunSummary` is the one
shape of a run's state, returned by the flow, printed by `fastsam-label run` and `status`, and kept
in the manifest. `RunManifest` is written once, at commit, to `runs/{run_id}/manifest.json`; its shards' states go
beside it, one row each, in `runs/{run_id}/summaries.parquet` (`workers.runs.summaries`), so the
manifest stays small whatever the number of shards.
"""

from __future__ import annotations

import os
import socket
from collections import Counter
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from schemas.job import IncrementalMode
from schemas.stats import MaskStats
from schemas.tables import SCHEMA_VERSION


class ShardSummary(BaseModel):
    """The outcome of one shard attempt.

    Attributes:
        run_id, shard_id: which shard.
        attempt_id: the attempt that produced it.
        objects: source objects in the shard (= rows written to the images table).
        labelled: objects labelled (status ok).
        masks: rows written to the masks table.
        prompts: rows written to the prompts table.
        embeddings: rows written to the embeddings table (jobs with clip.keep_embeddings).
        errors_by_kind: failed objects per ImageStatus.
        stage_seconds: wall seconds per stage summed over the shard's images
            (read, decode, segment, score) plus write (the shard's table uploads).
        seconds: wall seconds of the whole shard.
        models: sha256 of every model that labelled rows, by role ("fastsam", "clip").
        mask_stats: distributions of the shard's masks (for the run report).
        worker: host and process that did the work (for diagnosis only; outputs do not depend on it).
    """

    model_config = ConfigDict(frozen=True)

    run_id: str
    shard_id: int
    attempt_id: str = ""
    objects: int
    labelled: int
    masks: int
    prompts: int = 0
    embeddings: int = 0
    errors_by_kind: dict[str, int] = Field(default_factory=dict)
    stage_seconds: dict[str, float] = Field(default_factory=dict)
    seconds: float = 0.0
    models: dict[str, list[str]] = Field(default_factory=dict)
    mask_stats: MaskStats = Field(default_factory=MaskStats)
    worker: str = ""


class TableFile(BaseModel):
    """One table part of a shard attempt.

    Attributes:
        key: where it is published (runs/{run_id}/{table}/shard-N.parquet).
        staged: where the attempt wrote it first (runs/{run_id}/_attempts/{attempt}/...).
        rows: rows in the part.
    """

    model_config = ConfigDict(frozen=True)

    key: str
    staged: str
    rows: int


class ShardMarker(BaseModel):
    """`done/shard-N.json`: created once, by the first attempt to finish; it decides which attempt counts.

    Attributes:
        attempt_id: the attempt whose tables are the shard's.
        files: its table parts, by table name.
        summary: its summary.
        created_at: UTC time the marker was created.
    """

    model_config = ConfigDict(frozen=True)

    attempt_id: str
    files: dict[str, TableFile]
    summary: ShardSummary
    created_at: datetime


class RunCounts(BaseModel):
    """Object and row counts of a run.

    Attributes:
        listed: source objects the listing matched (after the job's filters).
        skipped: of those, left out as unchanged since an earlier committed run (incremental runs).
        new, changed, relabelled: of those planned by an incremental run, objects no earlier run
            labelled, objects whose ETag changed, and objects unchanged but labelled under another
            labelling fingerprint (model, CLIP, prompts or selection).
        objects: objects in the shards done so far (= images-table rows).
        labelled: of those, labelled (status ok).
        failed: of those, failed (any other status).
        masks: masks-table rows.
        prompts: prompts-table rows.
    """

    listed: int = 0
    skipped: int = 0
    new: int = 0
    changed: int = 0
    relabelled: int = 0
    objects: int = 0
    labelled: int = 0
    failed: int = 0
    masks: int = 0
    prompts: int = 0


RunState = Literal["running", "incomplete", "failed", "committed"]


class ListErrors(BaseModel):
    """Problems the plan met listing the source: folders it could not list, bad rows of a source manifest.

    Attributes:
        count: problems: folders skipped (unreadable, or symbolic links to folders, which are not
            followed), manifest rows naming no object under the source, keys a manifest lists twice.
        first: the first few, as "what: why" (paths relative to the source), each saying its fix.
    """

    model_config = ConfigDict(frozen=True)

    count: int = 0
    first: list[str] = Field(default_factory=list)

    def warning(self, source: str) -> str | None:
        """One line for people, or None when nothing was skipped."""
        if not self.count:
            return None
        more = f" and {self.count - len(self.first)} more" if self.count > len(self.first) else ""
        return (
            f"{self.count} problem(s) listing {source} (what they name may be missing from this run): "
            f"{'; '.join(self.first)}{more}; fix a folder's permissions, point source.uri at the folder a link "
            "leads to, or fix the manifest's rows"
        )


class RunSummary(BaseModel):
    """A run's state, counts and timings: the same shape for the flow, the CLI, `status` and the manifest.

    Attributes:
        run_id: the run.
        output: URI of the run's folder.
        state: running (a flow is labelling it), incomplete (stopped before every shard was done),
            failed (this attempt ended with failed shards), committed (_SUCCESS written).
        shards_planned, shards_done: shard counts.
        failed_shards: shard id -> why it failed (this attempt).
        counts: see RunCounts.
        list_errors: parts of the source the plan could not list (see ListErrors).
        errors_by_kind: failed objects per ImageStatus.
        stage_seconds: wall seconds per stage, summed over images.
        models: sha256 of every model that labelled rows, by role.
        seconds: wall seconds of this attempt of the flow; None outside a flow.
        labelled_now: objects labelled by this attempt (not by an earlier, interrupted one).
        images_per_second: labelled_now / seconds.
    """

    run_id: str
    output: str
    state: RunState
    shards_planned: int
    shards_done: int
    failed_shards: dict[int, str] = Field(default_factory=dict)
    counts: RunCounts
    list_errors: ListErrors = Field(default_factory=ListErrors)
    errors_by_kind: dict[str, int] = Field(default_factory=dict)
    stage_seconds: dict[str, float] = Field(default_factory=dict)
    models: dict[str, list[str]] = Field(default_factory=dict)
    seconds: float | None = None
    labelled_now: int | None = None
    images_per_second: float | None = None

    @classmethod
    def of_shards(
        cls,
        run_id: str,
        output: str,
        state: RunState,
        shards_planned: int,
        plan: Plan,
        done: Iterable[ShardSummary],
        **extra: Any,
    ) -> RunSummary:
        """Totals over the done shards' summaries (read once, in one pass), with the plan's listing counts."""
        errors: Counter = Counter()
        stages: Counter = Counter()
        models: dict[str, set[str]] = {}
        n = objects = labelled = masks = prompts = 0
        for s in done:
            n += 1
            objects, labelled, masks, prompts = (objects + s.objects, labelled + s.labelled, masks + s.masks,
                                                 prompts + s.prompts)  # fmt: skip
            errors.update(s.errors_by_kind)
            stages.update(s.stage_seconds)
            for role, hashes in s.models.items():
                models.setdefault(role, set()).update(hashes)
        counts = RunCounts(
            listed=plan.listed,
            skipped=plan.skipped,
            new=plan.new,
            changed=plan.changed,
            relabelled=plan.relabelled,
            objects=objects,
            labelled=labelled,
            failed=sum(errors.values()),
            masks=masks,
            prompts=prompts,
        )
        return cls(
            run_id=run_id,
            output=output,
            state=state,
            shards_planned=shards_planned,
            shards_done=n,
            counts=counts,
            errors_by_kind=dict(sorted(errors.items())),
            stage_seconds={k: round(v, 3) for k, v in stages.items()},
            models={role: sorted(h) for role, h in sorted(models.items())},
            **extra,
        )

    def one_line(self) -> str:
        """The summary as one line for people."""
        c = self.counts
        speed = f", {self.images_per_second} images/s" if self.images_per_second is not None else ""
        unlisted = f", {self.list_errors.count} listing problem(s)" if self.list_errors.count else ""
        return (
            f"run {self.run_id} {self.state}: {c.objects} objects, {c.labelled} labelled, {c.failed} failed, "
            f"{c.masks} masks{unlisted}{speed} -> {self.output}"
        )


class ShardState(BaseModel):
    """A shard of a committed run: the attempt that counts and its summary (a row of summaries.parquet)."""

    shard_id: int
    attempt_id: str
    summary: ShardSummary


class RunManifest(BaseModel):
    """Everything needed to understand a committed run without reading its tables.

    Attributes:
        schema_version: of the tables this run wrote.
        run_id: the run.
        job: the validated job, as a dict.
        fingerprint: what decided the output (see schemas.fingerprint), as in the plan.
        prompts: positive then negative prompts: the order of the CLIP score lists.
        models: {"fastsam": {"name", "sha256"}, "clip": {"name", "sha256"}}; sha256 lists every hash
            that labelled rows.
        code_version: the fastsam-label version that committed it.
        summaries: key of the shards' states (runs/{run_id}/summaries.parquet, one row per shard,
            with the attempt that counts); None in manifests written before the file, which list them
            in `shards`.
        shards: manifests written before `summaries`: every shard, with the attempt that counts; None since.
        summary: the run's summary at commit.
        started_at, finished_at: UTC times.
    """

    schema_version: str = SCHEMA_VERSION
    run_id: str
    job: dict[str, Any]
    fingerprint: dict[str, Any]
    prompts: list[str]
    models: dict[str, dict[str, Any]]
    code_version: str
    summaries: str | None = None
    shards: list[ShardState] | None = None
    summary: RunSummary
    started_at: datetime
    finished_at: datetime

    @property
    def positive_prompts(self) -> list[str]:
        """The prompts a mask can be labelled with: `prompts` without the job's negatives."""
        negatives = set(self.job.get("negative_prompts") or ())
        return [p for p in self.prompts if p not in negatives]


class Planning(BaseModel):
    """A plan being made: written when planning starts, so a resumed planner is held to the same job.

    The shard lists written so far carry the listing's position (`PlanProgress`); `plan.json` seals it.

    Attributes:
        run_id: the run.
        incremental: how earlier runs are consulted (IncrementalMode).
        fingerprint: the planning job's fingerprint (schemas.fingerprint).
        created_at: UTC time planning started.
    """

    run_id: str
    incremental: IncrementalMode = "off"
    fingerprint: dict
    created_at: datetime


class PlanProgress(BaseModel):
    """Where planning stood when a shard list was cut, kept in its Parquet footer: a resume goes on from here.

    Attributes:
        through: the key of the shard's last object; the listing goes on after it (S3 StartAfter).
        listed: objects the listing matched up to and including `through`.
        skipped, new, changed, relabelled: of those, the incremental kinds (see Plan).
        relabel_runs: runs whose labels of relabelled objects differ (a few; for Plan.relabel_because).
    """

    through: str
    listed: int
    skipped: int = 0
    new: int = 0
    changed: int = 0
    relabelled: int = 0
    relabel_runs: list[str] = Field(default_factory=list)


class Plan(BaseModel):
    """What a run will label.

    Attributes:
        run_id: the run.
        shards: number of shards (ids 0..shards-1).
        objects: source objects in the plan.
        listed: objects the source listing matched before incremental filtering.
        skipped: objects left out as unchanged since an earlier committed run (see `incremental`).
        incremental: how earlier runs were consulted (IncrementalMode; plans made before modes
            existed say true, which meant "source").
        new, changed, relabelled: incremental runs: planned objects no earlier run labelled, whose
            ETag changed, and unchanged but labelled under another labelling fingerprint.
        relabel_because: the labelling fields in which the earlier runs of relabelled objects differ
            from this run's ("model.conf", "prompts", ...).
        list_errors: parts of the source that could not be listed (their objects are not in the plan).
        fingerprint: the planning job's fingerprint (schemas.fingerprint).
        created_at: UTC time the plan was made.
    """

    run_id: str
    shards: int
    objects: int
    listed: int
    skipped: int = 0
    incremental: IncrementalMode = "off"
    new: int = 0
    changed: int = 0
    relabelled: int = 0
    relabel_because: list[str] = Field(default_factory=list)
    list_errors: ListErrors = ListErrors()
    fingerprint: dict
    created_at: datetime

    @field_validator("incremental", mode="before")
    @classmethod
    def _legacy_bool(cls, v: Any) -> Any:
        return {True: "source", False: "off"}.get(v, v) if isinstance(v, bool) else v

    def incremental_line(self) -> str | None:
        """What an incremental plan found, for people; None for a full run."""
        if self.incremental == "off":
            return None
        because = f" ({', '.join(self.relabel_because[:6])} differ)" if self.relabel_because else ""
        relabel = ""
        if self.relabelled:
            relabel = f", {self.relabelled:,} labelled under other settings{because}: relabelling"
        return (
            f"incremental ({self.incremental}): {self.new:,} new, {self.changed:,} changed{relabel}; "
            f"{self.skipped:,} unchanged skipped"
        )


class LeaseRecord(BaseModel):
    """Who holds a run.

    Attributes:
        owner: random id of the holding flow.
        host, pid: where it runs.
        acquired_at, renewed_at: UTC times.
        ttl_s: seconds after `renewed_at` when the lease is stale.
        released: the holder is done with the run.
    """

    owner: str
    host: str
    pid: int
    acquired_at: datetime
    renewed_at: datetime
    ttl_s: float
    released: bool = False

    def free(self, now: datetime) -> bool:
        """Whether another flow may take the run now."""
        if self.released or now - self.renewed_at > timedelta(seconds=self.ttl_s):
            return True
        return self.host == socket.gethostname() and not _alive(self.pid)

    def describe(self) -> str:
        """Who holds it, for messages."""
        return f"{self.host} pid {self.pid}, since {self.acquired_at:%Y-%m-%d %H:%M:%S} UTC"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True
