"""The Labeler: the shard runner. Models loaded once (`workers.labelling.stack`), then shards in, tables out.

A plain class with no Ray import: call it directly in tests and scripts, or wrap it in a Ray actor
(`workers.ray.pool`). `workers.ray.raydata.BatchLabeler` is the Ray Data callable over the same stack.

Stages overlap inside a shard: a bounded thread pool reads and decodes up to `compute.prefetch`
images ahead of the model, within `compute.read_ahead_pixels` decoded pixels; the model runs on
batches of `compute.batch_size` images of one shape; masks are RLE from the start (dense masks
never pile up); the crops of a batch's images stream through CLIP together, the next chunk cut
while the model runs on this one; then the shard attempt's tables are committed (workers.runs.attempts).
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from schemas.errors import NotAFileError, ObjectTooLargeError, StoreError
from schemas.job import Job
from schemas.layout import RunLayout
from schemas.manifest import ShardSummary
from schemas.tables import ImageStatus, image_id
from workers.labelling import rows, steps
from workers.labelling.readahead import PixelBudget, PixelHold, ShapeBatcher, read_ahead
from workers.labelling.sidecar import ImagePrompt, load_prompt_table
from workers.labelling.stack import ModelStack, stack_for
from workers.runs import attempts, parts
from workers.runs.plan import read_shard_list
from workers.storage import ObjectInfo, ObjectStore, display_key, open_store, read_with_deadline


class Labeler:
    """A model stack held once; `label_shard` labels and commits a planned shard."""

    def __init__(
        self,
        job: Job,
        source: ObjectStore | None = None,
        output: ObjectStore | None = None,
        stack: ModelStack | None = None,
    ):
        """Load the models (and the prompt table) once.

        Args:
            job: the validated job.
            source: the store to read images from instead of the job's source URI (tests).
            output: the store to write to instead of the job's output URI (tests).
            stack: models already loaded for this job (default: `workers.labelling.stack.stack_for(job)`).
        """
        self.job = job
        self.source = source or open_store(job.source.uri, job.storage)
        self.output = output or open_store(job.output, job.storage)
        self.stack = stack or stack_for(job)
        self.image_prompts: dict[str, list[ImagePrompt]] = {}
        if job.prompt_table:
            self.image_prompts = load_prompt_table(job)
        self.worker = f"{socket.gethostname()}:{os.getpid()}"
        self._embeddings = rows.embeddings_schema_of(job) if job.clip.keep_embeddings else None

    @property
    def models(self) -> dict[str, list[str]]:
        """sha256 of the loaded models by role."""
        return self.stack.models

    @property
    def clip_name(self) -> str | None:
        """The text embedder's name; None without prompts."""
        return self.stack.clip_name

    # -- one shard ------------------------------------------------------------------------------

    def label_shard(self, run_id: str, shard_id: int) -> ShardSummary:
        """Label one planned shard as a new attempt and commit it; returns the summary that counts.

        Reads `runs/{run_id}/shards/shard-NNNNN.parquet` from the output store. When the shard is
        already done (a late or repeated dispatch) nothing is labelled or written and the done
        attempt's summary is returned; see workers.runs.attempts for how attempts race.
        """
        layout = RunLayout(run_id)
        done = attempts.read_marker(self.output, layout, shard_id)
        if done is not None:
            return done.summary
        t0 = time.perf_counter()
        attempt_id = attempts.new_attempt_id()
        part = self.label_objects(layout, shard_id, read_shard_list(self.output, layout, shard_id))
        return attempts.commit_part(self.output, layout, shard_id, attempt_id, part, t0)

    def label_part(self, run_id: str, shard_id: int, start: int, stop: int) -> parts.ShardPart:
        """Label objects [start, stop) of a planned shard and return their tables; nothing is written.

        The pool uses parts to find an object that kills its actor (workers.ray.pool).
        """
        layout = RunLayout(run_id)
        objects = read_shard_list(self.output, layout, shard_id)
        return self.label_objects(layout, shard_id, objects[start:stop])

    def label_objects(self, layout: RunLayout, shard_id: int, objects: Sequence[ObjectInfo]) -> parts.ShardPart:
        """Read, decode and label source objects into a shard part; one images row per object, in order."""
        results = self.label_results(objects)
        stage_s = {s: sum(r.ms.get(s, 0.0) for r in results) / 1000 for s in rows.STAGES}
        prompts = rows.prompts_table(results, layout.run_id) if self.job.prompt_table else None
        return parts.ShardPart(
            images=rows.images_table(results, layout.run_id, shard_id, self.stack.model_sha256, self.clip_name),
            masks=rows.masks_table(results, layout.run_id, self.job.all_prompts),
            prompts=prompts,
            stage_seconds=stage_s,
            models=self.models,
            worker=self.worker,
            embeddings=rows.embeddings_table(results, layout.run_id, self._embeddings) if self._embeddings else None,
        )

    def label_results(self, objects: Sequence[ObjectInfo]) -> list[rows.ImageResult]:
        """Read, decode and label source objects; one result per object, in order, failures included."""
        with self.stack.threads_set():
            return self._label_results(objects)

    def _label_results(self, objects: Sequence[ObjectInfo]) -> list[rows.ImageResult]:
        c = self.job.compute
        results: list[rows.ImageResult] = []
        batcher = ShapeBatcher(c.batch_size, max_waiting=c.prefetch)
        budget = PixelBudget(c.read_ahead_pixels)
        with ThreadPoolExecutor(c.read_threads, thread_name_prefix="fastsam-read") as pool:
            try:
                loads = read_ahead(pool, lambda i, o: self._load(o, budget.hold(i)), objects, c.prefetch, budget.head)
                for res, rgb, hold in loads:
                    results.append(res)
                    if rgb is not None:
                        for batch in batcher.add((res, rgb, hold), rgb.shape):
                            steps.label_batch(self.stack, batch, self.image_prompts)
                for batch in batcher.flush():
                    steps.label_batch(self.stack, batch, self.image_prompts)
            finally:  # on an error, readers waiting for pixels must not keep the pool from shutting down
                budget.close()
        return results

    def _load(self, obj: ObjectInfo, hold: PixelHold) -> tuple[rows.ImageResult, np.ndarray | None, PixelHold]:
        uri = self.source.uri_of(obj.key)
        res = rows.ImageResult(key=obj.key, uri=uri, image_id=image_id(uri), etag=obj.etag, size=obj.size)
        t0 = time.perf_counter()
        try:
            data, got = read_with_deadline(
                self.source, obj.key, self.job.limits.max_bytes, self.job.storage.object_timeout_s
            )
        except ObjectTooLargeError as e:
            return steps.fail(res, ImageStatus.TOO_LARGE, str(e)), None, hold
        except NotAFileError as e:
            return steps.fail(res, ImageStatus.UNSUPPORTED, str(e)), None, hold
        except StoreError as e:
            return steps.fail(res, ImageStatus.READ_ERROR, str(e)), None, hold
        except Exception as e:  # any failure to fetch is recorded, and the shard goes on
            message = f"{display_key(uri)}: {type(e).__name__}: {e}"
            return steps.fail(res, ImageStatus.READ_ERROR, message), None, hold
        res.etag, res.size = got.etag, got.size  # what was read, not what the listing said
        res.ms["read"] = steps.ms_since(t0)
        return res, steps.decode_into(res, data, self.job.limits.max_pixels, hold), hold
