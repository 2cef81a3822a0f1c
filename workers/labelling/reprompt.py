"""Re-prompting: a committed run's masks scored against new prompts from its stored CLIP embeddings.

A run labelled with `clip.keep_embeddings` holds each scored mask's CLIP image embedding (the
`embeddings` table). A reprompt run is a new committed run (`Job.reprompt_of` names its parent)
whose shards mirror the parent's: its images and prompts tables are the parent's rows under the new
run id, its masks tables the parent's masks with `clip_cosine`, `clip_prob` and the labels
computed from the stored embeddings and the new prompts' text embeddings, by the same functions a
full run uses (`fastsam_core.scoring.similarities`, `fastsam_core.prompts.with_labels`). No image is
read and no crop is cut. A reprompt of a reprompt reads the embeddings of the run that stored them
(`embeddings_run`).

Its job is the parent's with the new prompts, negatives and selection, so its labelling fingerprint
is that of a full run with those prompts: a later incremental run with them skips what it labelled.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from fastsam_core.embedders import Embedder
from fastsam_core.prompts import NO_MASK, scored_batch, with_labels
from fastsam_core.scoring import similarities
from schemas.errors import CheckpointError, JobError
from schemas.fingerprint import InputHashes, fingerprint
from schemas.job import Job, SelectionSpec
from schemas.job_file import parse_job
from schemas.layout import RunLayout
from schemas.manifest import Plan, ShardSummary
from schemas.tables import IMAGES_SCHEMA, MASKS_SCHEMA, PROMPTS_SCHEMA
from workers import runs
from workers.labelling.stack import embedder_for
from workers.runs import attempts
from workers.runs.committed import CommittedRun
from workers.runs.parts import ShardPart
from workers.storage import ObjectStore

#: Images-table columns that time work a reprompt does not do (left null).
_TIMINGS = ("read_ms", "decode_ms", "segment_ms", "score_ms")


def embeddings_run(output: ObjectStore, run_id: str) -> CommittedRun:
    """The committed run whose `embeddings` table holds `run_id`'s mask embeddings (itself, or the run it re-prompts).

    Raises:
        RunNotFoundError, RunNotCommittedError, RunDamagedError: a run on the way cannot be read.
        JobError: the run kept no embeddings (one line, with the fix).
    """
    run = CommittedRun(output, run_id)
    seen = {run_id}
    while (parent := run.manifest.job.get("reprompt_of")) is not None:
        if parent in seen:
            raise JobError(f"run {run_id}: its reprompt parents loop through run {parent}")
        seen.add(parent)
        run = CommittedRun(output, parent)
    if "embeddings" not in run.tables:
        raise JobError(
            f"run {run_id} kept no mask embeddings (its job had clip.keep_embeddings off), so it cannot be "
            "re-prompted; label the images again with clip.keep_embeddings: true, or run the job with the new prompts"
        )
    return run


def reprompt_job(
    parent: CommittedRun,
    prompts: tuple[str, ...],
    negatives: tuple[str, ...],
    selection: SelectionSpec,
    clip_weights: str | None = None,
    output: str | None = None,
    endpoint_url: str | None = None,
) -> Job:
    """The parent's job with new prompts, negatives and selection, marked as a reprompt of the parent.

    `clip_weights` replaces the path of the parent's CLIP weights (moved files); its sha256 must still be
    the parent's, which the embedder load checks. `output` and `endpoint_url` replace the parent's
    (an output that moved, a different endpoint).

    Raises:
        JobError: the new prompts are invalid (validated as in any job).
    """
    data = dict(parent.manifest.job)
    clip = dict(data.get("clip") or {})
    clip["keep_embeddings"] = False  # a reprompt stores no embeddings: it reads its parent's
    if clip_weights is not None:
        clip["weights"] = clip_weights
    if output is not None:
        data["output"] = output
    if endpoint_url is not None:
        data["storage"] = {**(data.get("storage") or {}), "endpoint_url": endpoint_url}
    data.update(
        prompts=list(prompts),
        negative_prompts=list(negatives),
        selection=selection.model_dump(mode="json"),
        clip=clip,
        reprompt_of=parent.layout.run_id,
    )
    return parse_job(data, environ={})


def load_embedder(job: Job, stored: CommittedRun) -> Embedder:
    """The text embedder of `job`, refused unless it is the CLIP model that made `stored`'s embeddings.

    Raises:
        CheckpointError: another architecture, or weights whose sha256 differs from the stored run's.
    """
    made_by = stored.manifest.fingerprint
    if job.clip.arch != made_by.get("clip.arch"):
        raise CheckpointError(
            f"run {stored.layout.run_id}'s embeddings were made by CLIP {made_by.get('clip.arch')}, not "
            f"{job.clip.arch}: scores from another model would mean nothing; re-prompt with the same CLIP"
        )
    if job.clip.sha256 is not None and job.clip.sha256 != made_by.get("clip.sha256"):
        raise CheckpointError(
            f"run {stored.layout.run_id}'s embeddings were made by CLIP weights with sha256 "
            f"{made_by.get('clip.sha256')}, not {job.clip.sha256}; give the same weights file (--clip-weights)"
        )
    pinned = job.clip.model_copy(update={"sha256": made_by.get("clip.sha256")})
    return embedder_for(pinned, job.model, job.storage)


@dataclass(frozen=True)
class TextSide:
    """The new prompts as the scoring needs them.

    Attributes:
        embeddings: (P + Q, D) float32 unit vectors, positives then negatives.
        logit_scale: the embedder's.
        n_prompts: P, the positive prompts.
        labels: the positive prompts, in order.
    """

    embeddings: np.ndarray
    logit_scale: float
    n_prompts: int
    labels: tuple[str, ...]

    @classmethod
    def of(cls, job: Job, embedder: Embedder) -> TextSide:
        """Embed the job's prompts (the only model work a reprompt does)."""
        return cls(embedder.embed_texts(list(job.all_prompts)), embedder.logit_scale, len(job.prompts), job.prompts)


def vectors(embeddings: pa.Table) -> np.ndarray:
    """(N, D) float32 from an embeddings table's fixed-size list column (float16 or float32 storage)."""
    col = embeddings["embedding"].combine_chunks()
    dim = col.type.list_size
    return np.asarray(col.flatten().to_numpy(zero_copy_only=False), np.float32).reshape(-1, dim)


def rescore(masks: pa.Table, embeddings: pa.Table, text: TextSide, selection: SelectionSpec, run_id: str) -> pa.Table:
    """`masks` (MASKS_SCHEMA rows of one shard) scored against `text` from their stored `embeddings`.

    Masks without a stored embedding (not scored by the parent: too small, over clip.max_masks) keep
    null scores and no label, as in a full run.
    """
    n, t = masks.num_rows, len(text.embeddings)
    cos = np.full((n, t), np.nan, np.float32)
    prob = np.full((n, t), np.nan, np.float32)
    mask_key = pc.binary_join_element_wise(masks["image_id"], pc.cast(masks["mask_id"], pa.string()), "/")
    emb_key = pc.binary_join_element_wise(embeddings["image_id"], pc.cast(embeddings["mask_id"], pa.string()), "/")
    where = pc.fill_null(pc.index_in(mask_key, value_set=emb_key.combine_chunks()), -1).to_numpy()
    has = where >= 0
    rows = where[has].astype(np.int64)
    if len(rows):
        cos[has], prob[has] = similarities(vectors(embeddings)[rows], text.embeddings, text.logit_scale)
    label = np.full(n, NO_MASK, np.int64)
    score = np.full(n, np.nan, np.float32)
    image = masks["image_id"].to_numpy(zero_copy_only=False)
    mask_ids = masks["mask_id"].to_numpy(zero_copy_only=False)
    starts = np.flatnonzero(np.r_[True, image[1:] != image[:-1]]) if n else np.zeros(0, np.int64)
    for a, b in zip(starts, [*starts[1:], n], strict=True):  # the masks of one image are contiguous
        image_masks = scored_batch(mask_ids[a:b], cos[a:b], prob[a:b])
        labelled = with_labels(image_masks, text.n_prompts, selection.mode, selection.threshold)
        label[a:b], score[a:b] = labelled.columns["label"], labelled.columns["label_score"]
    has_label = label >= 0
    names = np.array([*text.labels, ""], object)[np.where(has_label, label, len(text.labels))]
    cols = {
        "run_id": pa.array([run_id] * n, pa.string()),
        "clip_cosine": _score_lists(cos),
        "clip_prob": _score_lists(prob),
        "label": pa.array(names, pa.string(), mask=~has_label),
        "label_index": pa.array(label, pa.int16(), mask=~has_label),
        "label_score": pa.array(score, pa.float32(), mask=~has_label),
    }
    return pa.table({name: cols.get(name, masks[name]) for name in MASKS_SCHEMA.names}, schema=MASKS_SCHEMA)


def _score_lists(arr: np.ndarray) -> pa.Array:
    """(N, K) float32 rows as list<float32>; a row with a NaN (not scored) is null, as `rows.mask_columns` writes."""
    n, k = arr.shape
    valid = ~np.isnan(arr).any(1)
    offsets = pa.array(np.arange(n + 1, dtype=np.int32) * k, pa.int32())
    lists = pa.ListArray.from_arrays(offsets, pa.array(arr.reshape(-1), pa.float32()), mask=pa.array(~valid))
    return lists.cast(pa.list_(pa.float32()))


class Reprompter:
    """Scores the shards of a committed run against new prompts into a new run, shard by shard.

    Args:
        output: the output store both runs are under.
        parent: the run re-prompted.
        stored: the run holding the embeddings (`embeddings_run(output, parent's id)`).
        job: `reprompt_job(parent, ...)`.
        run_id: the new run.
        embedder: `load_embedder(job, stored)`; only its text tower runs.
    """

    def __init__(
        self, output: ObjectStore, parent: CommittedRun, stored: CommittedRun, job: Job, run_id: str, embedder: Embedder
    ):
        self.output, self.parent, self.stored, self.job = output, parent, stored, job
        self.layout = RunLayout(run_id)
        self.text = TextSide.of(job, embedder)
        sha = getattr(embedder, "sha256", None)
        self.models = {"clip": [sha]} if sha else {}

    def plan(self) -> Plan:
        """The new run's plan: the parent's shards, this job's fingerprint (made now, or the existing one)."""
        fp = self.parent.manifest.fingerprint
        hashes = InputHashes(model=fp["model.sha256"], clip=fp.get("clip.sha256"),
                             prompt_table=fp.get("prompt_table.sha256"))  # fmt: skip
        parent_plan = runs.load_plan(self.output, self.parent.layout)
        return runs.plan_copy(self.output, self.layout, parent_plan, fingerprint(self.job, hashes))

    def shards(self, shard_ids: Iterable[int], threads: int = 8) -> int:
        """Re-score and commit the shards (done ones are left as they are), `threads` at once; the objects in them."""
        with ThreadPoolExecutor(threads, thread_name_prefix="reprompt") as pool:
            return sum(s.objects for s in pool.map(self.shard, shard_ids))

    def shard(self, shard_id: int) -> ShardSummary:
        """Re-score one shard and commit it as an attempt; the summary that counts (a done shard is left as it is)."""
        done = attempts.read_marker(self.output, self.layout, shard_id)
        if done is not None:
            return done.summary
        t0 = time.perf_counter()
        part = self.part(shard_id)
        return attempts.commit_part(self.output, self.layout, shard_id, attempts.new_attempt_id(), part, t0)

    def part(self, shard_id: int) -> ShardPart:
        """One shard's tables, from the parent's shard and the stored run's embeddings."""
        t0 = time.perf_counter()
        state = self.parent.states[shard_id]
        run_id = self.layout.run_id
        embeddings = self.stored.table("embeddings", self.stored.states[shard_id])
        masks = rescore(self.parent.table("masks", state), embeddings, self.text, self.job.selection, run_id)
        images = _renamed(self.parent.table("images", state), run_id)
        for name in _TIMINGS:
            images = images.set_column(images.schema.get_field_index(name), name, pa.nulls(len(images), pa.float32()))
        prompts = None
        if "prompts" in self.parent.tables:
            prompts = _renamed(self.parent.table("prompts", state), run_id).cast(PROMPTS_SCHEMA)
        return ShardPart(
            images=images.cast(IMAGES_SCHEMA),
            masks=masks,
            prompts=prompts,
            stage_seconds={"score": time.perf_counter() - t0},
            models={"fastsam": list(state.summary.models.get("fastsam", [])), **self.models},
            worker=f"{socket.gethostname()}:{os.getpid()}",
        )


def _renamed(table: pa.Table, run_id: str) -> pa.Table:
    """`table` with every run_id set to `run_id`."""
    return table.set_column(
        table.schema.get_field_index("run_id"), "run_id", pa.array([run_id] * len(table), pa.string())
    )
