"""Re-prompting from stored embeddings equals labelling again with the new prompts, without reading an image."""

import numpy as np
import open_clip
import pyarrow.parquet as pq
import pytest
import torch

from fastsam_core.checkpoints import sha256_file
from schemas import RunLayout, parse_job
from schemas.errors import CheckpointError, JobError
from schemas.fingerprint import labelling_id
from schemas.job import SelectionSpec
from schemas.tables import EMBEDDING_DTYPE_KEY, check_table
from tests.support.helpers import label_and_commit, reprompt_and_commit, run_rows
from workers import runs
from workers.labelling.reprompt import embeddings_run, load_embedder, reprompt_job
from workers.runs.committed import CommittedRun
from workers.storage import LocalStore

ARCH = "ViT-S-32"  # a real open_clip architecture, small enough for the CPU


@pytest.fixture(scope="module")
def clip_file(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("clip") / "clip.pt"
    torch.save(open_clip.create_model(ARCH, pretrained=None).state_dict(), path)
    return path


@pytest.fixture(scope="module")
def source(five_scenes):
    return five_scenes


def _job(src, out, prompts, negatives=(), clip=None, **extra):
    data = {
        "source": {"uri": str(src)},
        "output": str(out),
        "prompts": list(prompts),
        "negative_prompts": list(negatives),
        "clip": {"arch": "color-words", **(clip or {})},
        "compute": {"shard_size": 2},
        **extra,
    }
    return parse_job(data, environ={})


def _reprompt(out, parent, run_id, prompts, negatives=(), selection=None, **kw):
    store = LocalStore(out)
    job = reprompt_job(
        CommittedRun(store, parent), tuple(prompts), tuple(negatives), selection or SelectionSpec(), **kw
    )
    stored = embeddings_run(store, parent)
    reprompt_and_commit(store, parent, job, run_id, load_embedder(job, stored), stored)
    return job


def _same_masks(a: list[dict], b: list[dict], atol: float, threshold: float) -> None:
    """Masks equal but for run_id; scores within `atol`; labels equal unless a score is within atol of `threshold`."""
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        for k in ("image_id", "mask_id", "rle_counts", "rle_size", "bbox", "area", "score", "stability"):
            assert x[k] == y[k], k
        assert (x["clip_cosine"] is None) == (y["clip_cosine"] is None)
        if x["clip_cosine"] is None:
            assert x["label"] is None and y["label"] is None
            continue
        np.testing.assert_allclose(x["clip_cosine"], y["clip_cosine"], atol=atol, rtol=0)
        np.testing.assert_allclose(x["clip_prob"], y["clip_prob"], atol=atol * 100, rtol=0)
        near = y["label_score"] is not None and abs(y["label_score"] - threshold) < atol * 100
        if not near:
            assert x["label"] == y["label"] and x["label_index"] == y["label_index"]


@pytest.mark.parametrize(("dtype", "atol"), [("float32", 1e-6), ("float16", 2e-3)])
def test_reprompt_equals_a_full_run_with_the_new_prompts(tmp_path, source, clip_file, dtype, atol):
    clip = {"arch": ARCH, "weights": str(clip_file), "sha256": sha256_file(clip_file), "keep_embeddings": True,
            "embedding_dtype": dtype, "min_area": 50}  # fmt: skip
    out = tmp_path / "out"
    first = _job(source, out, ["a photo of a cat"], clip=clip)
    label_and_commit(first, "first")
    emb = pq.read_table(out / "runs/first/embeddings/shard-00000.parquet")
    check_table(emb, "embeddings")
    assert emb.schema.metadata[EMBEDDING_DTYPE_KEY] == dtype.encode()
    _, masks = run_rows(LocalStore(out), "first")
    scored = sum(m["clip_cosine"] is not None for m in masks)
    assert scored > 0 and sum(1 for _ in _all(out, "first", "embeddings")) == scored

    prompts, negatives = ["a red square", "a blue circle"], ["background"]
    full_job = _job(source, out, prompts, negatives, clip=clip, selection={"threshold": 0.4})
    label_and_commit(full_job, "full")
    again = _reprompt(out, "first", "again", prompts, negatives, SelectionSpec(threshold=0.4))
    _, full_masks = run_rows(LocalStore(out), "full")
    images, again_masks = run_rows(LocalStore(out), "again")
    _same_masks(again_masks, full_masks, atol, 0.4)
    assert {r["run_id"] for r in images} == {"again"} and all(r["read_ms"] is None for r in images)
    # a reprompt is labelled like a full run with its prompts: the next incremental run skips its objects
    checked = runs.load_plan(LocalStore(out), RunLayout("full")).fingerprint
    assert labelling_id(runs.load_plan(LocalStore(out), RunLayout("again")).fingerprint) == labelling_id(checked)
    assert again.reprompt_of == "first"
    other = clip_file.parent / "other.pt"  # the same architecture, other weights
    torch.manual_seed(1)
    torch.save(open_clip.create_model(ARCH, pretrained=None).state_dict(), other)
    moved = reprompt_job(
        CommittedRun(LocalStore(out), "first"), ("a dog",), (), SelectionSpec(), clip_weights=str(other)
    )
    with pytest.raises(CheckpointError, match="sha256"):
        load_embedder(moved, CommittedRun(LocalStore(out), "first"))


def _all(out, run_id, table):
    for path in sorted((out / f"runs/{run_id}/{table}").glob("*.parquet")):
        yield from pq.read_table(path).to_pylist()


def test_reprompt_of_a_reprompt_reads_the_stored_embeddings_and_selection_modes_apply(tmp_path, source):
    out = tmp_path / "out"
    kept = {"keep_embeddings": True, "embedding_dtype": "float32"}  # "best" compares masks: keep them exact
    label_and_commit(_job(source, out, [], clip=kept), "stored")  # no prompts: embeddings only
    _reprompt(out, "stored", "red", ["red"])
    _reprompt(out, "red", "best", ["red", "blue"], selection=SelectionSpec(mode="best"))
    label_and_commit(_job(source, out, ["red", "blue"], selection={"mode": "best"}), "full-best")
    _same_masks(run_rows(LocalStore(out), "best")[1], run_rows(LocalStore(out), "full-best")[1], 1e-6, 0.5)
    assert CommittedRun(LocalStore(out), "best").manifest.job["reprompt_of"] == "red"
    labels = [m["label"] for m in run_rows(LocalStore(out), "best")[1] if m["label"]]
    assert sorted(set(labels)) == ["blue", "red"]


def test_reprompt_refuses_a_run_without_embeddings_and_another_clip(tmp_path, source, clip_file):
    out = tmp_path / "out"
    label_and_commit(_job(source, out, ["red"]), "plain")
    with pytest.raises(JobError, match=r"kept no mask embeddings .*clip\.keep_embeddings: true"):
        embeddings_run(LocalStore(out), "plain")
    label_and_commit(_job(source, out, ["red"], clip={"keep_embeddings": True}), "kept")
    run = CommittedRun(LocalStore(out), "kept")
    other = reprompt_job(run, ("red",), (), SelectionSpec()).model_copy(
        update={"clip": run.manifest.job and parse_job(
            {"source": {"uri": str(source)}, "output": str(out), "clip": {"arch": ARCH, "weights": str(clip_file),
             "allow_unpinned": True}}, environ={}).clip}
    )  # fmt: skip
    with pytest.raises(CheckpointError, match="made by CLIP color-words, not ViT-S-32"):
        load_embedder(other, run)
