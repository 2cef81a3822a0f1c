"""Re-prompting from stored embeddings vs labelling again, on the same committed run, and float16 vs float32 storage.

    python -m benchmarks.bench_reprompt [--images 24] [--size 480x640] [--arch ViT-B-32] [--shard-size 256]

A full run labels synthetic photos with CLIP (random weights of a real architecture: the same
cost as trained ones) and keeps its mask embeddings; then the same masks are scored against new
prompts twice: by `reprompt` from the stored embeddings, and by labelling the images again with
the new prompts (the reference). Prints wall seconds and images/s of each, their ratio, the
embeddings' bytes per mask for each dtype, and the largest cosine and probability differences and
label disagreements of each dtype against the reference. Model loading is not timed.
"""

from __future__ import annotations

import argparse
import io
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and print a table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=24)
    ap.add_argument("--size", default="480x640", help="HxW of the synthetic images")
    ap.add_argument("--arch", default="ViT-B-32", help="open_clip architecture (random weights)")
    ap.add_argument("--shard-size", type=int, default=256, help="objects per shard (the product's default)")
    ap.add_argument("--workdir", default=None, help="where to write (default: a temporary folder)")
    args = ap.parse_args(argv)

    import tempfile

    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-reprompt-"))
    src, out = work / "src", work / "out"
    _photos(src, args.images, *(int(v) for v in args.size.split("x")))
    weights = _clip_weights(work, args.arch)
    first, again = ["a photo of a dog", "a photo of a cat", "a car"], ["a red shape", "a blue shape", "grass"]
    negatives = ["background"]

    rows = []
    seconds = {}
    for dtype in ("float16", "float32"):
        seconds[f"full {dtype}"], _ = _full(
            src, out, f"first-{dtype}", first, negatives, weights, args.arch, dtype, args.shard_size
        )
    seconds["full (new prompts)"], masks = _full(
        src, out, "reference", again, negatives, weights, args.arch, None, args.shard_size
    )
    from workers.storage import LocalStore

    store = LocalStore(out)
    for dtype in ("float16", "float32"):
        t = _reprompt(store, f"first-{dtype}", f"again-{dtype}", again, negatives)
        seconds[f"reprompt {dtype}"] = t
        rows.append(_compare(store, f"again-{dtype}", "reference", dtype, out))
    n = args.images
    print(f"{n} images {args.size}, CLIP {args.arch} (random weights), {masks} masks, 2 CPUs")
    print(f"{'step':<22} {'seconds':>8} {'images/s':>10}")
    for k, v in seconds.items():
        print(f"{k:<22} {v:8.2f} {n / v:10.1f}")
    ratio = seconds["full (new prompts)"] / seconds["reprompt float16"]
    print(f"reprompt vs labelling again, wall with commit and report: x{ratio:.0f} (float16 embeddings)")
    work = {run: _work_seconds(store, run) for run in ("reference", "again-float16")}
    print(f"labelling work per image: {1000 * work['reference'] / n:.1f} ms (read, decode, segment, CLIP); "
          f"re-scoring per image: {1000 * work['again-float16'] / n:.2f} ms (tables read, scored, written): "
          f"x{work['reference'] / work['again-float16']:.0f}")  # fmt: skip
    print(f"{'dtype':<8} {'bytes/mask':>10} {'max |dcos|':>11} {'max |dprob|':>12} {'labels differ':>14}")
    for r in rows:
        print(f"{r['dtype']:<8} {r['bytes']:10.0f} {r['cos']:11.2e} {r['prob']:12.2e} {r['differ']:>8} of {r['n']}")


def _photos(src: Path, n: int, h: int, w: int) -> None:
    from PIL import Image

    from fastsam_core.testing.synthetic import make_scene

    src.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        img, _ = make_scene(np.random.default_rng(i), h, w, n_shapes=(6, 10))
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, "JPEG", quality=92)
        (src / f"{i:04d}.jpg").write_bytes(buf.getvalue())


def _clip_weights(work: Path, arch: str) -> Path:
    import open_clip
    import torch

    torch.manual_seed(0)
    path = work / "clip.pt"
    torch.save(open_clip.create_model(arch, pretrained=None).state_dict(), path)
    return path


def _full(src, out, run_id, prompts, negatives, weights, arch, dtype, shard_size) -> tuple[float, int]:
    """Plan, label and commit a run (models loaded first, not timed); (seconds, masks)."""
    from fastsam_core.checkpoints import sha256_file
    from schemas import RunLayout, parse_job
    from tests.support.helpers import plan_for
    from workers import runs
    from workers.labelling.labeler import Labeler
    from workers.outputs import report
    from workers.storage import LocalStore

    clip = {"arch": arch, "weights": str(weights), "sha256": sha256_file(weights)}
    if dtype:
        clip.update(keep_embeddings=True, embedding_dtype=dtype)
    data = {"source": {"uri": str(src)}, "output": str(out), "prompts": prompts,
            "negative_prompts": negatives, "clip": clip, "compute": {"shard_size": shard_size}}  # fmt: skip
    job = parse_job(data, environ={})
    labeler = Labeler(job)
    t0 = time.perf_counter()
    plan = plan_for(job, run_id)
    for i in range(plan.shards):
        labeler.label_shard(run_id, i)
    manifest = runs.commit_run(job, LocalStore(out), RunLayout(run_id), "bench", datetime.now(UTC), report.at_commit)
    return time.perf_counter() - t0, manifest.summary.counts.masks


def _reprompt(store, parent, run_id, prompts, negatives) -> float:
    """Reprompt `parent` into `run_id` (the CLIP model loaded first, not timed); seconds."""
    from schemas.job import SelectionSpec
    from tests.support.helpers import reprompt_and_commit
    from workers.labelling.reprompt import embeddings_run, load_embedder, reprompt_job
    from workers.runs.committed import CommittedRun

    job = reprompt_job(CommittedRun(store, parent), tuple(prompts), tuple(negatives), SelectionSpec())
    stored = embeddings_run(store, parent)
    embedder = load_embedder(job, stored)
    t0 = time.perf_counter()
    reprompt_and_commit(store, parent, job, run_id, embedder, stored)
    return time.perf_counter() - t0


def _work_seconds(store, run_id) -> float:
    """Seconds of per-shard work the run's manifest counts (its stages summed over shards)."""
    from schemas import RunLayout
    from workers import runs

    return sum(runs.load_manifest(store, RunLayout(run_id)).summary.stage_seconds.values())


def _compare(store, run_id, reference, dtype, out: Path) -> dict:
    from tests.support.helpers import run_rows

    got = sorted(run_rows(store, run_id)[1], key=lambda m: (m["image_id"], m["mask_id"]))
    want = sorted(run_rows(store, reference)[1], key=lambda m: (m["image_id"], m["mask_id"]))
    cos = prob = 0.0
    differ = scored = 0
    for a, b in zip(got, want, strict=True):
        if b["clip_cosine"] is None:
            continue
        scored += 1
        cos = max(cos, float(np.abs(np.subtract(a["clip_cosine"], b["clip_cosine"])).max()))
        prob = max(prob, float(np.abs(np.subtract(a["clip_prob"], b["clip_prob"])).max()))
        differ += a["label"] != b["label"]
    files = list((out / f"runs/{run_id.replace('again', 'first')}/embeddings").glob("*.parquet"))
    size = sum(f.stat().st_size for f in files)
    return {"dtype": dtype, "bytes": size / max(scored, 1), "cos": cos, "prob": prob, "differ": differ, "n": scored}


if __name__ == "__main__":
    main()
