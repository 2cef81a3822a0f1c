"""Reading a committed run, one shard at a time: what exports and the report start from.

Only a committed run (`_SUCCESS`) is read, and only the files its shard markers count (the
manifest's shards and the published table parts), so what people get is exactly what the run
counts. A shard's images and masks tables are read together and dropped before the next shard,
so memory does not grow with the run.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from schemas.layout import RunLayout
from schemas.manifest import RunManifest
from schemas.tables import ImageStatus
from workers import runs
from workers.shards import read_parquet
from workers.store import ObjectStore


class RunNotFoundError(ValueError):
    """No run of that id under the output."""


class RunNotCommittedError(RuntimeError):
    """The run exists but is not committed; the message says how to finish it."""


class NothingSelectedError(ValueError):
    """The filters leave nothing to export."""


@dataclass(frozen=True)
class MaskFilter:
    """Which masks an export keeps.

    Attributes:
        min_score: keep masks whose detector score is at least this.
        min_stability: keep masks whose stability is at least this.
        min_area: keep masks of at least this many pixels.
        labelled_only: keep only masks with a label.
        prompts: keep only masks labelled with one of these prompts (implies labelled_only).
        limit: keep only the first `limit` labelled images (in the run's shard order).
    """

    min_score: float | None = None
    min_stability: float | None = None
    min_area: int | None = None
    labelled_only: bool = False
    prompts: tuple[str, ...] = ()
    limit: int | None = None

    def apply(self, masks: pa.Table) -> pa.Table:
        """The rows of a masks table that pass."""
        keep = pa.array([True] * masks.num_rows, pa.bool_())
        for column, bound in (("score", self.min_score), ("stability", self.min_stability), ("area", self.min_area)):
            if bound is not None:
                keep = pc.and_(keep, pc.greater_equal(masks[column], bound))
        if self.labelled_only or self.prompts:
            keep = pc.and_(keep, pc.is_valid(masks["label"]))
        if self.prompts:
            keep = pc.and_(keep, pc.is_in(masks["label"], value_set=pa.array(self.prompts, pa.string())))
        return masks.filter(pc.fill_null(keep, False))

    def describe(self) -> str:
        """The filters as command-line flags, for messages."""
        flags = [
            f"--min-score {self.min_score}" if self.min_score is not None else "",
            f"--min-stability {self.min_stability}" if self.min_stability is not None else "",
            f"--min-area {self.min_area}" if self.min_area is not None else "",
            "--labelled-only" if self.labelled_only else "",
            *(f"--prompt {p!r}" for p in self.prompts),
            f"--limit {self.limit}" if self.limit is not None else "",
        ]
        return " ".join(f for f in flags if f) or "no filters"


@dataclass
class ShardRows:
    """One shard of a committed run: every image row, and the masks that passed the filter."""

    shard_id: int
    images: pa.Table
    masks: pa.Table


class CommittedRun:
    """A committed run under an output store.

    Raises (at construction):
        RunNotFoundError: no such run.
        RunNotCommittedError: the run is planned but not committed.
    """

    def __init__(self, output: ObjectStore, run_id: str):
        self.output = output
        self.layout = RunLayout(run_id)
        manifest = runs.load_manifest(output, self.layout) if runs.is_committed(output, self.layout) else None
        if manifest is None:
            plan = runs.load_plan(output, self.layout)
            if plan is None:
                raise RunNotFoundError(
                    f"no run {run_id} under {output.uri}; check the run id and --output (fastsam-label status lists "
                    "a run's state)"
                )
            done = len(runs.done_markers(output, self.layout))
            raise RunNotCommittedError(
                f"run {run_id} is not committed ({done} of {plan.shards} shards done); finish it with "
                f"`fastsam-label run JOB --run-id {run_id}` (the job that planned it), then export"
            )
        self.manifest: RunManifest = manifest

    @property
    def prompts(self) -> list[str]:
        """The run's positive prompts, in order (labels are only ever positive prompts)."""
        return self.manifest.positive_prompts

    def shards(self, masks: MaskFilter | None = None) -> Iterator[ShardRows]:
        """The run's shards in order, each read when it is reached; masks filtered by `masks`.

        With `masks.limit`, rows after the `limit`-th labelled image are left out (and their masks),
        and reading stops once the limit is reached.
        """
        keep = masks or MaskFilter()
        left = keep.limit
        for state in self.manifest.shards:
            if left is not None and left <= 0:
                return
            images = read_parquet(self.output, self.layout.table("images", state.shard_id), "images")
            table = read_parquet(self.output, self.layout.table("masks", state.shard_id), "masks")
            if left is not None:  # rows up to (and with) the `left`-th labelled image
                ok = pc.cast(pc.equal(images["status"], ImageStatus.OK.value), pa.int64())
                before = pc.subtract(pc.cumulative_sum(ok), ok)  # labelled images before each row
                images = images.filter(pc.less(before, left))
                table = table.filter(pc.is_in(table["image_id"], value_set=images["image_id"]))
                left -= pc.sum(pc.cast(pc.equal(images["status"], ImageStatus.OK.value), pa.int64())).as_py() or 0
            yield ShardRows(state.shard_id, images, keep.apply(table))
