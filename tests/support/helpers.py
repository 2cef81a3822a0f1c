"""Shared builders for tests and benchmarks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from fastsam_core import MaskBatch
from fastsam_core import rle as rle_utils


def make_random_checkpoint(path: Path, seed: int = 0, imgsz: int = 320, scale: str = "n") -> Path:
    """Save a one-class YOLOv8-seg checkpoint with random weights that emits hundreds of masks.

    `scale` is the YOLOv8 scale: "n" (small, for tests) or "s" and "x" (FastSAM-s and FastSAM-x's
    architectures, for benchmarks).

    Plain random initialisation makes a network whose outputs collapse to constants (tied scores,
    empty masks); the heads are rescaled on a calibration image so that box scores spread over
    (0, 1), boxes have sizes of tens of pixels and mask logits are decisive (std 4).
    """
    from ultralytics.nn.tasks import SegmentationModel

    from fastsam_core.everything import letterbox
    from fastsam_core.testing.synthetic import make_scene

    torch.manual_seed(seed)
    net = SegmentationModel(f"yolov8{scale}-seg.yaml", nc=1, verbose=False).eval()
    for mod in net.modules():
        if isinstance(mod, torch.nn.Conv2d) and mod.weight.requires_grad:  # not the DFL's fixed arange
            torch.nn.init.kaiming_normal_(mod.weight, nonlinearity="relu")
    head = net.model[-1]
    img, _ = make_scene(np.random.default_rng(seed), 200, 300)
    x = torch.from_numpy(letterbox([img], imgsz, 32)).permute(0, 3, 1, 2).float() / 255

    def run():
        with torch.no_grad():
            (p, protos), _ = net(x)
        return p[0], protos[0]

    feats = {}
    hooks = [s[-1].register_forward_hook(lambda m, i, o, k=k: feats.__setitem__(k, o)) for k, s in enumerate(head.cv2)]
    for _ in range(3):
        run()
        for k, s in enumerate(head.cv2):
            s[-1].weight.data *= 2.0 / feats[k].std()
            s[-1].bias.data.zero_()
    for h in hooks:
        h.remove()
    p, _ = run()
    for _ in range(4):
        sig = torch.logit(p[4].double().clamp(1e-12, 1 - 1e-12)).std().float()
        for s in head.cv3:
            s[-1].weight.data *= 1.5 / sig
            s[-1].bias.data.fill_(-1.0)
        p, protos = run()
    logits_std = (p[5:].T @ protos.view(32, -1)).std()
    for s in head.cv4:
        s[-1].weight.data *= 4.0 / logits_std
        s[-1].bias.data *= 4.0 / logits_std
    net.names = {0: "object"}
    net.task = "segment"
    torch.save({"model": net, "train_args": {"task": "segment"}}, path)
    return path


def batch_from_masks(masks: list[np.ndarray], scores: list[float] | None = None) -> MaskBatch:
    """A MaskBatch made directly from dense (H, W) bool masks, for prompt tests without a model."""
    m = np.stack(masks).astype(bool)
    rles = rle_utils.encode(m)
    xywh = rle_utils.bbox_xywh(rles)
    boxes = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], 1)
    n = len(masks)
    return MaskBatch(
        image_hw=m.shape[1:],
        boxes_xyxy=boxes,
        scores=np.asarray(scores if scores is not None else np.linspace(0.9, 0.5, n)),
        rles=rles,
        areas=m.reshape(n, -1).sum(1),
        stability=np.ones(n),
        mask_ids=np.arange(n),
    )


def scene_bytes(seed: int, h: int = 160, w: int = 192, fmt: str = "JPEG") -> bytes:
    """An encoded synthetic scene of 3-5 coloured shapes (the small model's world)."""
    import io

    from PIL import Image

    from fastsam_core.testing.synthetic import make_scene

    img, _ = make_scene(np.random.default_rng(seed), h, w, n_shapes=(3, 5))
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, fmt, **({"quality": 92} if fmt == "JPEG" else {}))
    return buf.getvalue()


def plan_for(job, run_id: str, incremental: bool = False, source=None):
    """Preflight and plan a run as the flow does (schemas.manifest.Plan), without Prefect or Ray.

    `source` replaces the store the job's source URI names (for stores that misbehave on purpose).
    """
    from flows.preflight import preflight
    from schemas.fingerprint import fingerprint
    from schemas.layout import RunLayout
    from workers import runs
    from workers.storage import open_store

    layout = RunLayout(run_id)
    checked = preflight(job, layout)
    source = source or open_store(job.source.uri, job.storage)
    output = open_store(job.output, job.storage)
    return runs.plan_run(checked.job, source, output, layout, fingerprint(checked.job, checked.hashes), incremental)


def label_and_commit(job, run_id: str, incremental: bool | str = False):
    """Plan, label every shard with a Labeler and commit a run as the flow does, without Prefect or Ray; the plan."""
    from datetime import UTC, datetime

    from schemas.layout import RunLayout
    from workers import runs
    from workers.labelling.labeler import Labeler
    from workers.outputs import report
    from workers.storage import open_store

    plan = plan_for(job, run_id, incremental)
    labeler = Labeler(job)
    for shard_id in range(plan.shards):
        labeler.label_shard(run_id, shard_id)
    output = open_store(job.output, job.storage)
    runs.commit_run(job, output, RunLayout(run_id), "test", datetime.now(UTC), report.at_commit)
    return plan


def reprompt_and_commit(store, parent: str, job, run_id: str, embedder, stored):
    """A reprompt run of committed run `parent` (job: `reprompt_job(...)`; `stored`: its embeddings run), shards
    and commit as the flow does."""
    from datetime import UTC, datetime

    from schemas.layout import RunLayout
    from workers import runs
    from workers.labelling.reprompt import Reprompter
    from workers.outputs import report
    from workers.runs.committed import CommittedRun

    r = Reprompter(store, CommittedRun(store, parent), stored, job, run_id, embedder)
    r.shards(range(r.plan().shards))
    return runs.commit_run(job, store, RunLayout(run_id), "test", datetime.now(UTC), report.at_commit)


def flow_job(source: str, output: str, **extra) -> dict:
    """A small job (colour-word prompts, the shipped model, 1 actor) as the flow's parameter."""
    from schemas import parse_job

    data = {
        "source": {"uri": source},
        "output": output,
        "prompts": ["red", "blue"],
        "clip": {"arch": "color-words"},
        "compute": {"shard_size": 4, "num_actors": 1, "cpus_per_actor": 1, "batch_size": 2},
    }
    data.update(extra)
    return parse_job(data, environ={}).model_dump(mode="json")


def with_attempt_file(store, key: str, source_key: str, attempt_id: str) -> None:
    """Write at `key` the table at `source_key` with another attempt id in its Parquet footer."""
    import io

    import pyarrow.parquet as pq

    from schemas.tables import ATTEMPT_KEY
    from workers.storage.files import parquet_bytes

    table = pq.read_table(io.BytesIO(store.get(source_key)))
    meta = {**(table.schema.metadata or {}), ATTEMPT_KEY: attempt_id.encode()}
    store.put(key, parquet_bytes(table.replace_schema_metadata(meta)))


def run_rows(store, run_id: str) -> tuple[list[dict], list[dict]]:
    """(images rows, masks rows) of a committed run, shards in order, as its published tables hold them."""
    import io

    import pyarrow.parquet as pq

    from schemas.layout import RunLayout

    layout = RunLayout(run_id)
    images, masks = [], []
    for name, rows in (("images", images), ("masks", masks)):
        for obj in sorted(store.list(layout.table_prefix(name)), key=lambda o: o.key):
            rows += pq.read_table(io.BytesIO(store.get(obj.key))).to_pylist()
    return images, masks


def dense_mask(row: dict) -> np.ndarray:
    """The (H, W) uint8 mask of a masks-table row, decoded by pycocotools."""
    from pycocotools import mask as mask_utils

    return mask_utils.decode({"size": row["rle_size"], "counts": row["rle_counts"].encode()})


def cli(*args) -> tuple[int, dict, str]:
    """(exit code, the JSON summary it printed, its whole stdout) of one CLI command, in its own process.

    Each run starts and stops its own Ray cluster and Prefect server; in a process of its own, none of
    that lingers in the test process.
    """
    import json
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_API", "RAY_"))}
    proc = subprocess.run([sys.executable, "-m", "flows.cli", *map(str, args)], env=env, capture_output=True,
                          text=True, timeout=600)  # fmt: skip
    out = proc.stdout
    assert "\n{" in out, f"{args}: exit {proc.returncode}, printed {out!r}, {proc.stderr[-2000:]!r}"
    return proc.returncode, json.loads(out[out.index("\n{") :]), out
