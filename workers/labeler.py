"""The Labeler: models loaded once, then shards (or Ray Data batches) of images in, tables out.

A plain class with no Ray import: call it directly in tests and scripts, wrap it in a Ray actor
(`workers.pool`), or hand it to Ray Data's `map_batches`.

Inside a shard, a bounded thread pool reads and decodes up to `compute.prefetch` images ahead of
the model, within `compute.read_ahead_pixels` decoded pixels; the model runs on batches of
`compute.batch_size`; masks are RLE from the start (dense masks never pile up); each mask is
scored against every prompt; then the shard attempt's tables are committed (workers.commit).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import socket
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow as pa
import torch

from fastsam_core import (
    NO_MASK,
    TINY_CHECKPOINT,
    ClipEmbedder,
    ColorWordEmbedder,
    EverythingParams,
    FastSAMModel,
    MaskBatch,
    Segmenter,
    best_mask_per_prompt,
    label_instances,
    merge_by_points,
    score_masks,
    select_by_boxes,
    select_by_points,
)
from fastsam_core import rle as rle_utils
from fastsam_core.prompts import box_iou
from schemas.job import Job
from schemas.layout import RunLayout
from schemas.manifest import ShardSummary
from schemas.tables import ImageStatus, image_id
from workers import commit, rows
from workers.decode import ImageError, decode_image
from workers.readahead import PixelBudget, PixelHold, ShapeBatcher, read_ahead
from workers.shards import read_shard_list
from workers.sidecar import ImagePrompt, load_prompt_table
from workers.store import ObjectInfo, ObjectStore, ObjectTooLargeError, StoreError, display_key, open_store
from workers.weights import resolve_weights

log = logging.getLogger(__name__)

#: Errors that mean the worker, not the image, is in trouble: the shard fails and is retried.
FATAL = (MemoryError, torch.cuda.OutOfMemoryError)


def _ms(t0: float) -> float:
    return (time.perf_counter() - t0) * 1000


class Labeler:
    """FastSAM + CLIP held once; `label_shard` labels a shard, `__call__` a Ray Data batch."""

    def __init__(self, job: Job, source: ObjectStore | None = None, output: ObjectStore | None = None):
        """Load the models (and the prompt table) once.

        Args:
            job: the validated job.
            source: the store to read images from instead of the job's source URI (tests).
            output: the store to write to instead of the job's output URI (tests).
        """
        self.job = job
        self.source = source or open_store(job.source.uri, job.storage)
        self.output = output or open_store(job.output, job.storage)
        m = job.model
        ckpt = TINY_CHECKPOINT
        if m.checkpoint:
            ckpt = resolve_weights(m.checkpoint, m.sha256, m.allow_unpinned, job.storage)
        self.model = FastSAMModel.load(ckpt, m.sha256, m.allow_unpinned, device=m.device, half=m.half)
        params = EverythingParams(
            imgsz=m.imgsz or self.model.default_imgsz, conf=m.conf, iou=m.iou, max_det=m.max_det, retina=m.retina
        )
        self.segmenter = Segmenter(self.model, params)
        self.embedder = self._embedder() if job.prompts else None
        self.clip_name = None if self.embedder is None else self.embedder.name
        self.image_prompts: dict[str, list[ImagePrompt]] = {}
        if job.prompt_table:
            self.image_prompts = load_prompt_table(job)
        self.worker = f"{socket.gethostname()}:{os.getpid()}"

    def _embedder(self):
        c = self.job.clip
        if c.arch == "color-words":
            return ColorWordEmbedder()
        weights = resolve_weights(c.weights, c.sha256, c.allow_unpinned, self.job.storage)
        return ClipEmbedder(
            c.arch,
            weights,
            sha256=c.sha256,
            allow_unpinned=c.allow_unpinned,
            device=self.job.model.device,
            half=self.job.model.half,
            chunk_size=c.batch_size,
        )

    # -- one shard ------------------------------------------------------------------------------

    def label_shard(self, run_id: str, shard_id: int) -> ShardSummary:
        """Label one planned shard as a new attempt and commit it; returns the summary that counts.

        Reads `runs/{run_id}/shards/shard-NNNNN.parquet` from the output store. When the shard is
        already done (a late or repeated dispatch) nothing is labelled or written and the done
        attempt's summary is returned; see workers.commit for how attempts race.
        """
        layout = RunLayout(run_id)
        done = commit.read_marker(self.output, layout, shard_id)
        if done is not None:
            return done.summary
        t0 = time.perf_counter()
        attempt_id = commit.new_attempt_id()
        part = self.label_objects(layout, shard_id, read_shard_list(self.output, layout, shard_id))
        return commit.commit_part(self.output, layout, shard_id, attempt_id, part, t0)

    def label_part(self, run_id: str, shard_id: int, start: int, stop: int) -> rows.ShardPart:
        """Label objects [start, stop) of a planned shard and return their tables; nothing is written.

        The pool uses parts to find an object that kills its actor (workers.pool).
        """
        layout = RunLayout(run_id)
        objects = read_shard_list(self.output, layout, shard_id)
        return self.label_objects(layout, shard_id, objects[start:stop])

    def label_objects(self, layout: RunLayout, shard_id: int, objects: Sequence[ObjectInfo]) -> rows.ShardPart:
        """Read, decode and label source objects into a shard part; one images row per object, in order."""
        results = self.label_results(objects)
        stage_s = {s: sum(r.ms.get(s, 0.0) for r in results) / 1000 for s in rows.STAGES}
        prompts = rows.prompts_table(results, layout.run_id) if self.job.prompt_table else None
        return rows.ShardPart(
            images=rows.images_table(results, layout.run_id, shard_id, self.model.sha256, self.clip_name),
            masks=rows.masks_table(results, layout.run_id, self.job.all_prompts),
            prompts=prompts,
            stage_seconds=stage_s,
            models=self.models,
            worker=self.worker,
        )

    @property
    def models(self) -> dict[str, list[str]]:
        """sha256 of the loaded models by role (the CLIP stand-in has none)."""
        out = {"fastsam": [self.model.sha256]}
        clip_sha = getattr(self.embedder, "sha256", None)
        if clip_sha:
            out["clip"] = [clip_sha]
        return out

    @contextlib.contextmanager
    def _threads(self) -> Iterator[None]:
        """Torch's CPU threads = compute.cpus_per_actor while labelling, restored afterwards.

        Float sums depend on how work is split over threads; a fixed count per job makes the scores
        equal bit for bit in every actor and in a direct call.
        """
        if self.model.device.type != "cpu":
            yield
            return
        before = torch.get_num_threads()
        torch.set_num_threads(max(1, math.ceil(self.job.compute.cpus_per_actor)))
        try:
            yield
        finally:
            torch.set_num_threads(before)

    def label_results(self, objects: Sequence[ObjectInfo]) -> list[rows.ImageResult]:
        """Read, decode and label source objects; one result per object, in order, failures included."""
        with self._threads():
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
                            self._label_batch(batch)
                for batch in batcher.flush():
                    self._label_batch(batch)
            finally:  # on an error, readers waiting for pixels must not keep the pool from shutting down
                budget.close()
        return results

    def _load(self, obj: ObjectInfo, hold: PixelHold) -> tuple[rows.ImageResult, np.ndarray | None, PixelHold]:
        uri = self.source.uri_of(obj.key)
        res = rows.ImageResult(key=obj.key, uri=uri, image_id=image_id(uri), etag=obj.etag, size=obj.size)
        t0 = time.perf_counter()
        try:
            data, got = self.source.read(obj.key, max_bytes=self.job.limits.max_bytes)
        except ObjectTooLargeError as e:
            return self._fail(res, ImageStatus.TOO_LARGE, str(e)), None, hold
        except StoreError as e:
            return self._fail(res, ImageStatus.READ_ERROR, str(e)), None, hold
        except Exception as e:  # any failure to fetch is recorded, and the shard goes on
            return self._fail(res, ImageStatus.READ_ERROR, f"{display_key(uri)}: {type(e).__name__}: {e}"), None, hold
        res.etag, res.size = got.etag, got.size  # what was read, not what the listing said
        res.ms["read"] = _ms(t0)
        return (*self._decode(res, data, hold), hold)

    def _decode(
        self, res: rows.ImageResult, data: bytes, hold: PixelHold | None = None
    ) -> tuple[rows.ImageResult, np.ndarray | None]:
        t0 = time.perf_counter()
        try:
            img = decode_image(data, display_key(res.uri), self.job.limits.max_pixels, hold)
        except ImageError as e:
            if hold is not None:
                hold.release()
            return self._fail(res, ImageStatus(e.kind), str(e)), None
        res.ms["decode"] = _ms(t0)
        res.height, res.width = img.rgb.shape[:2]
        res.frames = img.frames
        return res, img.rgb

    @staticmethod
    def _fail(res: rows.ImageResult, kind: ImageStatus, message: str) -> rows.ImageResult:
        res.status, res.error = kind, message
        log.info("%s: %s", kind, message)
        return res

    def _label_batch(self, pending: list[tuple[rows.ImageResult, np.ndarray, PixelHold | None]]) -> None:
        try:
            self._segment_and_score(pending)
        finally:
            for _, _, hold in pending:
                if hold is not None:
                    hold.release()

    def _segment_and_score(self, pending: list[tuple[rows.ImageResult, np.ndarray, PixelHold | None]]) -> None:
        t0 = time.perf_counter()
        try:
            batches = self.segmenter([rgb for _, rgb, _ in pending])
        except FATAL:
            raise
        except Exception as e:  # find the image that breaks the batch, label the rest
            if len(pending) > 1:
                for p in pending:
                    self._segment_and_score([p])
                return
            res = pending[0][0]
            message = f"{display_key(res.uri)}: segmentation failed: {type(e).__name__}: {e}"
            self._fail(res, ImageStatus.LABEL_ERROR, message)
            return
        seg_ms = _ms(t0) / len(pending)
        for (res, rgb, _), mb in zip(pending, batches, strict=True):
            res.ms["segment"] = seg_ms
            t1 = time.perf_counter()
            try:
                res.masks, res.label, res.label_score = self._score(rgb, mb)
                res.prompts = self._image_prompts(res.key, res.masks)
            except FATAL:
                raise
            except Exception as e:  # one bad image does not stop the shard
                res.masks = None
                message = f"{display_key(res.uri)}: scoring failed: {type(e).__name__}: {e}"
                self._fail(res, ImageStatus.LABEL_ERROR, message)
                continue
            res.ms["score"] = _ms(t1)

    def _score(self, rgb: np.ndarray, mb: MaskBatch) -> tuple[MaskBatch, np.ndarray | None, np.ndarray | None]:
        """The batch with CLIP columns, and per-mask labels (prompt index or -1) with their probability."""
        job = self.job
        if self.embedder is None:
            return mb, None, None
        mb = score_masks(rgb, mb, self.embedder, job.prompts, job.negative_prompts, min_area=job.clip.min_area)
        n_pos = len(job.prompts)
        mode = job.selection.mode
        if mode == "instances":
            lab = label_instances(mb, n_pos, job.selection.threshold)
            return mb, lab.label, lab.score
        if mode == "best":
            label = np.full(len(mb), NO_MASK, np.int64)
            score = np.full(len(mb), np.nan, np.float32)
            cos, prob = mb.columns["clip_cosine"], mb.columns["clip_prob"]
            row_of = {int(m): i for i, m in enumerate(mb.mask_ids)}
            for j, mid in enumerate(best_mask_per_prompt(mb, n_pos)):
                if mid == NO_MASK:
                    continue
                i = row_of[int(mid)]
                # A mask that is the best for several prompts takes the one it matches most.
                if label[i] == NO_MASK or cos[i, j] > cos[i, label[i]]:
                    label[i], score[i] = j, prob[i, j]
            return mb, label, score
        return mb, None, None

    def _image_prompts(self, key: str, mb: MaskBatch) -> list[rows.PromptResult]:
        out = []
        for p in self.image_prompts.get(key, ()):
            if p.kind == "points":
                chosen = select_by_points(mb, p.points_xy, p.point_labels)
                merged = merge_by_points(mb, p.points_xy, p.point_labels)
                rle = merged if rle_utils.area(merged) > 0 else None
                out.append(rows.PromptResult(p.prompt_id, "points", chosen.mask_ids.tolist(), rle))
                continue
            mid = int(select_by_boxes(mb, p.box_xyxy[None])[0])
            if mid == NO_MASK:
                out.append(rows.PromptResult(p.prompt_id, "box", [], None, None))
                continue
            i = int(np.flatnonzero(mb.mask_ids == mid)[0])
            iou = float(box_iou(mb[i], p.box_xyxy[None])[0, 0])  # the IoU that chose it (box clipped)
            out.append(rows.PromptResult(p.prompt_id, "box", [mid], mb.rles[i], iou))
        return out

    # -- Ray Data -------------------------------------------------------------------------------

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        """Label a Ray Data batch: one output row per input image, failures included.

        Args:
            batch: columns "bytes" (encoded images, as from `ray.data.read_binary_files`) or "image"
                ((H, W, 3) uint8 arrays, as from `ray.data.read_images`), and optionally "path".

        Returns:
            A table with the images-table columns (run_id "ray-data", shard_id 0) plus "masks": a
            list per image of structs with the masks-table columns (without run_id and image_id).
        """
        if "bytes" not in batch and "image" not in batch:
            raise ValueError(
                f"a Ray Data batch needs a 'bytes' or an 'image' column, but has {sorted(batch)}; "
                "use ray.data.read_binary_files(..., include_paths=True) or ray.data.read_images(...)"
            )
        with self._threads():
            return self._call(batch)

    def _call(self, batch: dict[str, np.ndarray]) -> pa.Table:
        n = len(batch["bytes"] if "bytes" in batch else batch["image"])
        paths = [str(p) for p in batch["path"]] if "path" in batch else [f"item-{i}" for i in range(n)]
        loaded = []
        for i, path in enumerate(paths):
            res = rows.ImageResult(key=path, uri=path, image_id=image_id(path), etag=None, size=None)
            if "bytes" in batch:
                data = bytes(batch["bytes"][i])
                res.size = len(data)
                loaded.append(self._decode(res, data))
            else:
                loaded.append((res, _as_rgb(batch["image"][i], res)))
        batcher = ShapeBatcher(self.job.compute.batch_size, max_waiting=n)
        for res, rgb in loaded:
            if rgb is not None:
                for ready in batcher.add((res, rgb, None), rgb.shape):
                    self._label_batch(ready)
        for ready in batcher.flush():
            self._label_batch(ready)
        results = [r for r, _ in loaded]
        return rows.nested_table(results, "ray-data", self.model.sha256, self.clip_name, self.job.all_prompts)


def _as_rgb(arr: np.ndarray, res: rows.ImageResult) -> np.ndarray:
    a = np.asarray(arr)
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=2)
    a = a[..., :3]
    res.height, res.width, res.frames = a.shape[0], a.shape[1], 1
    return np.ascontiguousarray(a, dtype=np.uint8)
