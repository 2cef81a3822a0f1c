"""The Labeler: models loaded once, then shards (or Ray Data batches) of images in, tables out.

A plain class with no Ray import: call it directly in tests and scripts, wrap it in a Ray actor
(`workers.pool`), or hand it to Ray Data's `map_batches`.

Inside a shard, a bounded thread pool reads and decodes up to `compute.prefetch` images ahead of
the model; the model runs on batches of `compute.batch_size`; masks are RLE from the start (dense
masks never pile up); each mask is scored against every prompt; then the shard's tables are
written under keys fixed by (run id, shard id), and the completion marker last.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import socket
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import TypeVar

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
from schemas.job import Job, check_run_id
from schemas.manifest import ShardSummary
from schemas.tables import STATUS_OK, image_id
from workers import rows
from workers.decode import ImageError, decode_image
from workers.shards import done_key, parquet_bytes, read_shard_list, table_key
from workers.sidecar import ImagePrompt, load_prompt_table
from workers.store import ObjectInfo, ObjectStore, ObjectTooLargeError, StoreError, display_key, open_store
from workers.weights import resolve_weights

log = logging.getLogger(__name__)
T = TypeVar("T")
_END = object()
R = TypeVar("R")

#: Errors that mean the worker, not the image, is in trouble: the shard fails and is retried.
FATAL = (MemoryError, torch.cuda.OutOfMemoryError)


def read_ahead(pool: Executor, fn: Callable[[T], R], items: Iterable[T], depth: int) -> Iterator[R]:
    """fn(item) for each item, in order, computed up to `depth` items ahead in `pool`."""
    it = iter(items)
    queue = deque(pool.submit(fn, x) for _, x in zip(range(depth), it, strict=False))
    while queue:
        fut = queue.popleft()
        nxt = next(it, _END)
        if nxt is not _END:
            queue.append(pool.submit(fn, nxt))
        yield fut.result()


class ShapeBatcher:
    """Groups items into model batches of images of one shape.

    Ultralytics letterboxes a batch of one shape to the smallest stride-multiple rectangle, but a
    batch of mixed shapes to a square, so an image's masks would depend on its batch neighbours.
    Batching only equal shapes makes every image's output equal to labelling it alone.
    """

    def __init__(self, batch_size: int, max_waiting: int):
        """Args: batch_size: items per batch; max_waiting: most items held back in partial batches."""
        self.batch_size = batch_size
        self.max_waiting = max(max_waiting, 1)
        self._groups: dict[tuple, list] = {}
        self._waiting = 0

    def add(self, item: T, shape: tuple) -> list[list[T]]:
        """Add an item; returns the batches that are ready (full, or the largest when too many wait)."""
        group = self._groups.setdefault(tuple(shape), [])
        group.append(item)
        self._waiting += 1
        if len(group) >= self.batch_size:
            return [self._pop(tuple(shape))]
        if self._waiting > self.max_waiting:
            return [self._pop(max(self._groups, key=lambda k: len(self._groups[k])))]
        return []

    def flush(self) -> list[list[T]]:
        """Every partial batch still waiting."""
        return [self._pop(k) for k in list(self._groups)]

    def _pop(self, key: tuple) -> list:
        group = self._groups.pop(key)
        self._waiting -= len(group)
        return group


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
        """Label one planned shard and write its tables; safe to repeat (outputs are overwritten).

        Reads `runs/{run_id}/shards/shard-NNNNN.parquet` from the output store, writes the images,
        masks (and prompts) tables for the shard, then the completion marker with the summary.
        """
        check_run_id(run_id)
        t0 = time.perf_counter()
        objects = read_shard_list(self.output, run_id, shard_id)
        results = self.label_objects(objects)
        t_write = time.perf_counter()
        self.output.put(
            table_key(run_id, "images", shard_id),
            parquet_bytes(rows.images_table(results, run_id, shard_id, self.model.sha256, self.clip_name)),
        )
        self.output.put(
            table_key(run_id, "masks", shard_id), parquet_bytes(rows.masks_table(results, run_id, self.job.all_prompts))
        )
        n_prompts = 0
        if self.job.prompt_table:
            prompts = rows.prompts_table(results, run_id)
            n_prompts = prompts.num_rows
            self.output.put(table_key(run_id, "prompts", shard_id), parquet_bytes(prompts))
        write_s = time.perf_counter() - t_write
        stage_s = {s: sum(r.ms.get(s, 0.0) for r in results) / 1000 for s in rows.STAGES}
        summary = ShardSummary(
            run_id=run_id,
            shard_id=shard_id,
            objects=len(results),
            labelled=sum(r.status == STATUS_OK for r in results),
            masks=sum(len(r.masks) for r in results if r.status == STATUS_OK and r.masks is not None),
            prompts=n_prompts,
            errors_by_kind=dict(Counter(r.status for r in results if r.status != STATUS_OK)),
            stage_seconds={**stage_s, "write": write_s},
            seconds=time.perf_counter() - t0,
            worker=self.worker,
        )
        self.output.put(done_key(run_id, shard_id), summary.model_dump_json().encode())
        log.info("shard %d of %s: %d objects, %d masks", shard_id, run_id, summary.objects, summary.masks)
        return summary

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

    def label_objects(self, objects: Sequence[ObjectInfo]) -> list[rows.ImageResult]:
        """Read, decode and label source objects; one result per object, in order, failures included."""
        with self._threads():
            return self._label_objects(objects)

    def _label_objects(self, objects: Sequence[ObjectInfo]) -> list[rows.ImageResult]:
        c = self.job.compute
        results: list[rows.ImageResult] = []
        batcher = ShapeBatcher(c.batch_size, max_waiting=c.prefetch)
        with ThreadPoolExecutor(c.read_threads, thread_name_prefix="fastsam-read") as pool:
            for res, rgb in read_ahead(pool, self._load, objects, c.prefetch):
                results.append(res)
                if rgb is not None:
                    for batch in batcher.add((res, rgb), rgb.shape):
                        self._label_batch(batch)
            for batch in batcher.flush():
                self._label_batch(batch)
        return results

    def _load(self, obj: ObjectInfo) -> tuple[rows.ImageResult, np.ndarray | None]:
        uri = self.source.uri_of(obj.key)
        res = rows.ImageResult(key=obj.key, uri=uri, image_id=image_id(uri), etag=obj.etag, size=obj.size)
        t0 = time.perf_counter()
        try:
            data = self.source.get(obj.key, max_bytes=self.job.limits.max_bytes)
        except ObjectTooLargeError as e:
            return self._fail(res, "too_large", str(e)), None
        except StoreError as e:
            return self._fail(res, "read_error", str(e)), None
        except Exception as e:  # any failure to fetch is recorded, and the shard goes on
            return self._fail(res, "read_error", f"{display_key(uri)}: {type(e).__name__}: {e}"), None
        res.ms["read"] = _ms(t0)
        return self._decode(res, data)

    def _decode(self, res: rows.ImageResult, data: bytes) -> tuple[rows.ImageResult, np.ndarray | None]:
        t0 = time.perf_counter()
        try:
            img = decode_image(data, display_key(res.uri), self.job.limits.max_pixels)
        except ImageError as e:
            return self._fail(res, e.kind, str(e)), None
        res.ms["decode"] = _ms(t0)
        res.height, res.width = img.rgb.shape[:2]
        res.frames = img.frames
        return res, img.rgb

    @staticmethod
    def _fail(res: rows.ImageResult, kind: str, message: str) -> rows.ImageResult:
        res.status, res.error = kind, message
        log.warning("%s: %s", kind, message)
        return res

    def _label_batch(self, pending: list[tuple[rows.ImageResult, np.ndarray]]) -> None:
        t0 = time.perf_counter()
        try:
            batches = self.segmenter([rgb for _, rgb in pending])
        except FATAL:
            raise
        except Exception as e:  # find the image that breaks the batch, label the rest
            if len(pending) > 1:
                for p in pending:
                    self._label_batch([p])
                return
            res = pending[0][0]
            self._fail(res, "label_error", f"{display_key(res.uri)}: segmentation failed: {type(e).__name__}: {e}")
            return
        seg_ms = _ms(t0) / len(pending)
        for (res, rgb), mb in zip(pending, batches, strict=True):
            res.ms["segment"] = seg_ms
            t1 = time.perf_counter()
            try:
                res.masks, res.label, res.label_score = self._score(rgb, mb)
                res.prompts = self._image_prompts(res.key, res.masks)
            except FATAL:
                raise
            except Exception as e:  # one bad image does not stop the shard
                res.masks = None
                self._fail(res, "label_error", f"{display_key(res.uri)}: scoring failed: {type(e).__name__}: {e}")
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
        for item in loaded:
            if item[1] is not None:
                for ready in batcher.add(item, item[1].shape):
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
