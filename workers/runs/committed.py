"""Reading a committed run, one shard at a time: what exports and the report start from.

Only a committed run (`_SUCCESS`) is read, and only the files its manifest names: the manifest
must agree with the plan the run was made by (its fingerprint, and the job that has it), and each
shard's published tables must carry that shard's attempt in their footers (shards.read_shard_table),
so a manifest edited to point elsewhere, or a file swapped, truncated or removed, is an error
naming it, never rows from somewhere else. A shard's images and masks tables are read together and
dropped before the next shard, so memory does not grow with the run.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

import workers.runs as runs
from schemas.errors import (
    DAMAGED_FIX,
    JobError,
    ObjectNotFoundError,
    RunDamagedError,
    RunNotCommittedError,
    RunNotFoundError,
    TableError,
)
from schemas.fingerprint import InputHashes, differences, fingerprint
from schemas.job import StorageSpec
from schemas.job_file import parse_job
from schemas.layout import RunLayout
from schemas.manifest import Plan, RunManifest, ShardState
from schemas.tables import ATTEMPT_KEY, RUN_KEY, SHARD_KEY, ImageStatus
from workers.runs.summaries import ShardStates, published_footer
from workers.storage import ObjectStore, open_store
from workers.storage.files import read_parquet


def check_footer(
    where: str, meta: dict[bytes, bytes], rows: int, layout: RunLayout, shard_id: int, attempt_id: str, expected: int
) -> None:
    """Refuse a published table whose footer names another run, shard or attempt, or holds other than `expected` rows.

    Raises:
        RunDamagedError: naming the file, what it holds and what the manifest names.
    """
    found = tuple(meta.get(k, b"?").decode() for k in (RUN_KEY, SHARD_KEY, ATTEMPT_KEY))
    if found != (layout.run_id, str(shard_id), attempt_id) or rows != expected:
        raise RunDamagedError(
            f"{where} holds run {found[0]} shard {found[1]} attempt {found[2]} with {rows} rows, but the manifest "
            f"names run {layout.run_id} shard {shard_id} attempt {attempt_id} with {expected} rows: {DAMAGED_FIX}"
        )


def read_shard_table(
    store: ObjectStore, layout: RunLayout, name: str, shard_id: int, attempt_id: str, rows: int
) -> pa.Table:
    """A committed shard's published table, checked to be the one its manifest names (`check_footer`).

    The footer names the run, the shard and the attempt (`schemas.tables.with_attempt`), so a file
    swapped for another shard's, another run's or a late attempt's is refused, not read.

    Raises:
        RunDamagedError: the file is missing, unreadable (truncated), or not the manifest's.
    """
    key = layout.table(name, shard_id)
    try:
        table = read_parquet(store, key, name)
    except ObjectNotFoundError:
        raise RunDamagedError(f"{store.uri_of(key)} is missing: {DAMAGED_FIX}") from None
    except TableError as e:
        raise RunDamagedError(f"{e}: {DAMAGED_FIX}") from None
    check_footer(store.uri_of(key), table.schema.metadata or {}, table.num_rows, layout, shard_id, attempt_id, rows)
    return table


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
            done = len(runs.done_shard_ids(output, self.layout))
            raise RunNotCommittedError(
                f"run {run_id} is not committed ({done} of {plan.shards} shards done); finish it with "
                f"`fastsam-label run JOB --run-id {run_id}` (the job that planned it), then export"
            )
        plan = runs.load_plan(output, self.layout)
        check_manifest(manifest, plan, output.uri_of(self.layout.manifest))
        self.manifest: RunManifest = manifest
        #: The shards' states, in shard order (read a row group at a time).
        self.states = ShardStates.for_run(output, self.layout, manifest, plan.shards)

    def source(self, storage: StorageSpec | None = None) -> ObjectStore:
        """The store the run read its images from, with the run's storage settings (`storage`'s endpoint wins)."""
        settings = dict(self.manifest.job.get("storage") or {})
        if storage is not None and storage.endpoint_url:
            settings["endpoint_url"] = storage.endpoint_url
        return open_store(self.manifest.job["source"]["uri"], StorageSpec(**settings))

    @property
    def tables(self) -> tuple[str, ...]:
        """The tables each shard of the run published."""
        job = self.manifest.job
        extra = ("prompts",) if job.get("prompt_table") else ()
        if (job.get("clip") or {}).get("keep_embeddings"):
            extra += ("embeddings",)
        return ("images", "masks", *extra)

    def verify(self) -> None:
        """Check every published file of the run from its footer, one ranged read each.

        Each must exist, parse, name its run, shard and attempt as the manifest does, and hold the
        rows the shard counted.

        Raises:
            RunDamagedError: naming the first file that fails.
        """
        for state in self.states:
            for name in self.tables:
                key = self.layout.table(name, state.shard_id)
                meta, n = published_footer(self.output, key)
                check_footer(
                    self.output.uri_of(key),
                    meta,
                    n,
                    self.layout,
                    state.shard_id,
                    state.attempt_id,
                    table_rows(state, name),
                )

    def table(self, name: str, state: ShardState) -> pa.Table:
        """One shard's published table, checked against the manifest (shards.read_shard_table)."""
        return read_shard_table(
            self.output, self.layout, name, state.shard_id, state.attempt_id, table_rows(state, name)
        )

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
        for state in self.states:
            if left is not None and left <= 0:
                return
            images = self.table("images", state)
            table = self.table("masks", state)
            if left is not None:  # rows up to (and with) the `left`-th labelled image
                ok = pc.cast(pc.equal(images["status"], ImageStatus.OK.value), pa.int64())
                before = pc.subtract(pc.cumulative_sum(ok), ok)  # labelled images before each row
                images = images.filter(pc.less(before, left))
                table = table.filter(pc.is_in(table["image_id"], value_set=images["image_id"]))
                left -= pc.sum(pc.cast(pc.equal(images["status"], ImageStatus.OK.value), pa.int64())).as_py() or 0
            yield ShardRows(state.shard_id, images, keep.apply(table))


def table_rows(state: ShardState, table: str) -> int:
    """Rows the shard's summary counts in `table`."""
    s = state.summary
    return {"images": s.objects, "masks": s.masks, "prompts": s.prompts, "embeddings": s.embeddings}[table]


def check_manifest(manifest: RunManifest, plan: Plan | None, where: str) -> None:
    """Refuse a manifest that is not the committed state of the run its plan describes.

    The plan is created once, exclusively, by the job that planned the run; the manifest must name
    that run, carry the plan's fingerprint and hold a job with that fingerprint (so its source, prompts
    and model are the run's). That its shards are the planned ones is `ShardStates.for_run`'s check.

    Raises:
        RunDamagedError: naming the first thing that disagrees.
    """
    fix = DAMAGED_FIX
    if plan is None:
        raise RunDamagedError(f"{where}: the run has a manifest but no plan.json: {fix}")
    problems = []
    if manifest.run_id != plan.run_id:
        problems.append(f"it names run {manifest.run_id!r}, the plan {plan.run_id!r}")
    if manifest.fingerprint != plan.fingerprint:
        problems.append(
            f"its fingerprint differs from the plan's in {differences(plan.fingerprint, manifest.fingerprint)[:4]}"
        )
    else:
        try:
            fp = plan.fingerprint
            hashes = InputHashes(model=fp.get("model.sha256") or "?", clip=fp.get("clip.sha256"),
                                 prompt_table=fp.get("prompt_table.sha256"),
                                 listing=fp.get("source.listing_etag"))  # fmt: skip
            own = fingerprint(parse_job(manifest.job, environ={}), hashes)
        except JobError as e:
            problems.append(f"its job does not validate ({e})")
        else:
            differ = differences(fp, own)
            if differ:
                problems.append(f"its job differs from the one that planned the run in {differ[:4]}")
    if problems:
        raise RunDamagedError(f"{where} does not match the run's plan: {problems[0]}: {fix}")
