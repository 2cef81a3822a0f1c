"""A committed run of synthetic rows, made through the real plan, shard commit and run commit.

For exports and the report at sizes the small model would take long to label (tens of thousands
of masks), and for the rows the model never makes (a mask of zero area). Masks are ellipses drawn
with OpenCV and encoded by pycocotools, so every RLE decodes to a known mask.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

import cv2
import numpy as np
import pyarrow as pa
from pycocotools import mask as mask_utils

from schemas import RunLayout, parse_job
from schemas.fingerprint import InputHashes, fingerprint
from schemas.tables import IMAGES_SCHEMA, MASKS_SCHEMA, image_id
from workers import runs
from workers.outputs import report
from workers.runs import attempts, parts
from workers.storage import ObjectInfo, ObjectStore

SHA = "ab" * 32


def synthetic_keys(n: int) -> list[str]:
    """The keys of a synthetic run's source objects, in key order."""
    return [f"cam{i % 3}/frame-{i:06d}.jpg" for i in range(n)]


class Listing:
    """A source listing of the given keys (what S3 would list), nothing else."""

    def __init__(self, uri: str, keys: list[str]):
        self.uri, self.keys = uri.rstrip("/") + "/", keys

    def list(self, prefix: str = "", skipped=None, start_after=None):
        for key, i in sorted((k, i) for i, k in enumerate(self.keys)):  # in key order, as S3 lists
            if start_after is None or key > start_after:
                yield ObjectInfo(key, 1000 + i, f"{i:032x}")

    def uri_of(self, key: str) -> str:
        return self.uri + key


def _masks(rng: np.random.Generator, h: int, w: int, n: int) -> list[np.ndarray]:
    out = []
    for _ in range(n):
        m = np.zeros((h, w), np.uint8)
        center = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        axes = (int(rng.integers(3, w // 4)), int(rng.integers(3, h // 4)))
        cv2.ellipse(m, center, axes, float(rng.integers(0, 180)), 0, 360, 1, -1)
        out.append(m.astype(bool))
    return out


def make_run(
    output: ObjectStore,
    run_id: str,
    n_images: int,
    masks_per_image: int,
    prompts: tuple[str, ...] = ("red", "blue", "green"),
    shard_size: int = 64,
    size: tuple[int, int] = (120, 160),
    seed: int = 0,
    source: str = "s3://synthetic/src",
    keys: list[str] | None = None,
):
    """Plan, fill and commit a run; returns its job.

    Every 11th image is a decode error, every 7th has no mask, the first mask of image 0 has zero
    area; about a third of the masks are unlabelled. `keys` (sorted, as a listing is) replaces the
    synthetic keys; then n_images is their number.
    """
    keys = sorted(keys) if keys is not None else synthetic_keys(n_images)
    n_images = len(keys)
    job = parse_job(
        {
            "source": {"uri": source},
            "output": output.uri,
            "prompts": list(prompts),
            "clip": {"arch": "color-words"},
            "compute": {"shard_size": shard_size},
        },
        environ={},
    )
    layout = RunLayout(run_id)
    plan = runs.plan_run(job, Listing(source, keys), output, layout, fingerprint(job, InputHashes(model=SHA)))
    rng = np.random.default_rng(seed)
    h, w = size
    k = len(prompts)
    for shard in range(plan.shards):
        lo, hi = shard * shard_size, min((shard + 1) * shard_size, n_images)
        img_rows, mask_cols = [], {name: [] for name in MASKS_SCHEMA.names}
        for i in range(lo, hi):
            uri = f"{source.rstrip('/')}/{keys[i]}"
            errored = i % 11 == 10
            n = 0 if errored or i % 7 == 6 else masks_per_image
            dense = _masks(rng, h, w, n)
            if i == 0 and n:
                dense[0] = np.zeros((h, w), bool)  # a mask of zero area
            img_rows.append(
                {
                    "run_id": run_id,
                    "shard_id": shard,
                    "image_id": image_id(uri),
                    "uri": uri,
                    "key": keys[i],
                    "etag": f"{i:032x}",
                    "size": 1000 + i,
                    "status": "decode_error" if errored else "ok",
                    "error": f"{uri}: JPEG data does not decode" if errored else None,
                    "width": None if errored else w,
                    "height": None if errored else h,
                    "frames": None if errored else 1,
                    "mask_count": None if errored else n,
                    "model_sha256": SHA,
                    "clip_model": "color-words",
                }
            )
            if not dense:
                continue
            rles = mask_utils.encode(np.asfortranarray(np.stack(dense, axis=2).astype(np.uint8)))
            for j, (m, rle) in enumerate(zip(dense, rles, strict=True)):
                label = int(rng.integers(-1, k)) if j else 0  # -1: unlabelled
                cos = rng.uniform(0, 0.4, k).astype(np.float32)
                mask_cols["run_id"].append(run_id)
                mask_cols["image_id"].append(image_id(uri))
                mask_cols["mask_id"].append(j)
                mask_cols["rle_size"].append([h, w])
                mask_cols["rle_counts"].append(rle["counts"].decode())
                mask_cols["bbox"].append([float(v) for v in mask_utils.toBbox(rle)])
                mask_cols["area"].append(int(m.sum()))
                mask_cols["score"].append(float(rng.uniform(0.3, 1.0)))
                mask_cols["stability"].append(float(rng.uniform(0.5, 1.0)))
                mask_cols["clip_cosine"].append(cos.tolist())
                mask_cols["clip_prob"].append((np.exp(cos) / np.exp(cos).sum()).tolist())
                mask_cols["label"].append(prompts[label] if label >= 0 else None)
                mask_cols["label_index"].append(label if label >= 0 else None)
                mask_cols["label_score"].append(float(rng.uniform(0.5, 1.0)) if label >= 0 else None)
        part = parts.ShardPart(
            images=pa.Table.from_pylist(img_rows, schema=IMAGES_SCHEMA),
            masks=pa.table(mask_cols, schema=MASKS_SCHEMA),
            prompts=None,
            stage_seconds={},
            models={"fastsam": [SHA]},
            worker="synthetic",
        )
        attempts.commit_part(output, layout, shard, attempts.new_attempt_id(), part, time.perf_counter())
    runs.commit_run(job, output, layout, "synthetic", datetime.now(UTC), report.at_commit)
    return job
