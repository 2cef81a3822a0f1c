"""The Ray Data callable: a batch of encoded or decoded images in, one table row per image out.

    ds = ray.data.read_binary_files("s3://bucket/images/", include_paths=True)
    out = ds.map_batches(BatchLabeler, fn_constructor_args=(job,), batch_size=16, concurrency=2,
                         batch_format="numpy")

Each Ray Data worker builds the model stack once (`workers.labelling.stack`) and labels every batch it is
given with the same per-image steps as the shard runner (`workers.labelling.steps`); nothing is written:
Ray Data writes the returned rows (`ds.write_parquet(...)`).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from schemas.job import Job
from schemas.tables import image_id
from workers.labelling import rows, steps
from workers.labelling.readahead import ShapeBatcher
from workers.labelling.stack import ModelStack, stack_for

#: run_id of the rows a Ray Data pipeline returns (it is not a planned run).
RUN_ID = "ray-data"


class BatchLabeler:
    """Ray Data's `map_batches` callable (a class: the models load once per worker)."""

    def __init__(self, job: Job, stack: ModelStack | None = None):
        """Load the job's models (or use `stack`, already loaded for this job)."""
        self.job = job
        self.stack = stack or stack_for(job)

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
        with self.stack.threads_set():
            return self._call(batch)

    def _call(self, batch: dict[str, np.ndarray]) -> pa.Table:
        n = len(batch["bytes"] if "bytes" in batch else batch["image"])
        paths = [str(p) for p in batch["path"]] if "path" in batch else [f"item-{i}" for i in range(n)]
        results, loaded = [], []
        for i, path in enumerate(paths):
            res = rows.ImageResult(key=path, uri=path, image_id=image_id(path), etag=None, size=None)
            results.append(res)
            if "bytes" in batch:
                data = bytes(batch["bytes"][i])
                res.size = len(data)
                rgb = steps.decode_into(res, data, self.job.limits.max_pixels)
            else:
                rgb = _as_rgb(batch["image"][i], res)
            if rgb is not None:
                loaded.append((res, rgb, None))
        batcher = ShapeBatcher(self.job.compute.batch_size, max_waiting=n)
        for item in loaded:
            for ready in batcher.add(item, item[1].shape):
                steps.label_batch(self.stack, ready)
        for ready in batcher.flush():
            steps.label_batch(self.stack, ready)
        stack = self.stack
        return rows.nested_table(results, RUN_ID, stack.model_sha256, stack.clip_name, self.job.all_prompts)


def _as_rgb(arr: np.ndarray, res: rows.ImageResult) -> np.ndarray:
    a = np.asarray(arr)
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=2)
    a = a[..., :3]
    res.height, res.width, res.frames = a.shape[0], a.shape[1], 1
    return np.ascontiguousarray(a, dtype=np.uint8)
