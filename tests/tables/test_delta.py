"""The Delta Lake tables under {output}/tables/ on the loopback S3 endpoint: committed runs only, once each."""

import threading

import deltalake
import numpy as np
import polars as pl
import pyarrow.compute as pc
import pytest

from schemas import RunLayout, parse_job
from schemas.errors import RunNotCommittedError
from schemas.fingerprint import labelling_id
from tests.support.helpers import label_and_commit, plan_for, run_rows
from workers import runs
from workers.labelling.labeler import Labeler
from workers.runs.lease import RunLease
from workers.storage import open_store
from workers.tables import delta

ORDER = [("run_id", "ascending"), ("image_id", "ascending"), ("mask_id", "ascending")]


@pytest.fixture(scope="module")
def source(five_scenes):
    return five_scenes


def _job(src, bucket, endpoint, prompts, **extra):
    data = {
        "source": {"uri": str(src)},
        "output": f"s3://{bucket}/labels",
        "prompts": prompts,
        "clip": {"arch": "color-words", "keep_embeddings": True},
        "compute": {"shard_size": 2},
        "storage": {"endpoint_url": endpoint},
        **extra,
    }
    return parse_job(data, environ={})


def _read(output, name, version=None):
    uri, options = delta.location(output, name)
    return deltalake.DeltaTable(uri, storage_options=options, version=version)


def test_readers_see_exactly_the_committed_runs(source, bucket, s3_endpoint):
    a = _job(source, bucket, s3_endpoint, ["red", "blue"])
    b = _job(source, bucket, s3_endpoint, ["green"])
    output = open_store(a.output, a.storage)
    label_and_commit(a, "a")
    plan_for(b, "failed")  # planned, one of three shards labelled, never committed
    Labeler(b).label_shard("failed", 0)
    label_and_commit(b, "b")
    for run_id in ("a", "b"):
        delta.publish_run(output, run_id)
    with pytest.raises(RunNotCommittedError, match="run failed is not committed"):
        delta.publish_run(output, "failed")

    uri, options = delta.location(output, "masks")
    seen = pl.read_delta(uri, storage_options=options)
    assert sorted(seen["run_id"].unique().to_list()) == ["a", "b"]
    for run_id in ("a", "b"):
        images, masks = run_rows(output, run_id)
        got = seen.filter(pl.col("run_id") == run_id).sort(["image_id", "mask_id"])
        want = sorted(masks, key=lambda m: (m["image_id"], m["mask_id"]))
        assert got.drop(["labelling", "committed_at"]).to_dicts() == want  # every value, lists as lists
        plan = runs.load_plan(output, RunLayout(run_id))
        assert set(got["labelling"].to_list()) == {labelling_id(plan.fingerprint)}
        dataset = _read(output, "images").to_pyarrow_dataset()
        rows = dataset.to_table(filter=pc.field("run_id") == run_id)
        assert sorted(rows["image_id"].to_pylist()) == sorted(r["image_id"] for r in images)
    emb = _read(output, "embeddings").to_pyarrow_table()
    assert emb.num_rows == sum(1 for m in run_rows(output, "a")[1] + run_rows(output, "b")[1] if m["clip_cosine"])
    assert len(emb["embedding"][0].as_py()) == 7  # the colour-word embedder's dimension, widened to float32
    # time travel: version 0 of each table holds run a only
    assert set(_read(output, "masks", version=0).to_pyarrow_table()["run_id"].to_pylist()) == {"a"}


def test_a_run_is_appended_once_and_sync_heals_a_missed_one(source, bucket, s3_endpoint):
    job = _job(source, bucket, s3_endpoint, ["red"])
    output = open_store(job.output, job.storage)
    label_and_commit(job, "one")
    label_and_commit(job.model_copy(update={"prompts": ("blue",)}), "two")
    first = delta.publish_run(output, "one")
    assert first == {"embeddings": first["embeddings"], "masks": first["masks"], "images": 5} and first["masks"] > 0
    assert delta.publish_run(output, "one") == {"embeddings": 0, "masks": 0, "images": 0}
    with RunLease(output, RunLayout("two")):  # a flow holds the run: sync leaves it to the flow
        assert delta.sync(output) == []
    assert delta.sync(output) == ["two"]  # committed, never published (a commit that could not reach the table)
    assert delta.sync(output) == []
    images = _read(output, "images")
    assert (
        images.version() == 1 and sorted(images.to_pyarrow_table()["run_id"].to_pylist()) == ["one"] * 5 + ["two"] * 5
    )


def test_commits_racing_on_s3_all_land_once(source, bucket, s3_endpoint):
    job = _job(source, bucket, s3_endpoint, ["red"])
    output = open_store(job.output, job.storage)
    ids = [f"race-{i}" for i in range(3)]
    for i, run_id in enumerate(ids):
        label_and_commit(job.model_copy(update={"prompts": (["red", "blue", "green"][i],)}), run_id)
    errors = []

    def publish(run_id):
        try:
            delta.publish_run(output, run_id)
        except Exception as e:  # collected and asserted on below
            errors.append(e)

    # three different runs at once, creating the table: conditional PUTs decide each version
    threads = [threading.Thread(target=publish, args=(r,)) for r in ids]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    images = _read(output, "images").to_pyarrow_table()
    counts = pc.value_counts(images["run_id"]).to_pylist()
    assert sorted((c["values"], c["counts"]) for c in counts) == [(r, 5) for r in ids]
    table = _read(output, "images")
    assert table.version() == 2  # three appends: versions 0, 1, 2
    assert all(table.transaction_version(f"fastsam-label/{r}") == 1 for r in ids)


def test_optimize_and_vacuum_keep_every_row(source, bucket, s3_endpoint):
    job = _job(source, bucket, s3_endpoint, ["red"], compute={"shard_size": 1})
    output = open_store(job.output, job.storage)
    for i in range(3):
        label_and_commit(job.model_copy(update={"prompts": (["red", "blue", "green"][i],)}), f"small-{i}")
        delta.publish_run(output, f"small-{i}")
    before = _read(output, "masks")
    rows = before.to_pyarrow_table().sort_by(
        [("run_id", "ascending"), ("image_id", "ascending"), ("mask_id", "ascending")]
    )
    files = len(before.file_uris())
    metrics = delta.optimize(output)
    after = _read(output, "masks")
    assert metrics["masks"]["numFilesRemoved"] == files and len(after.file_uris()) == 1
    removed = delta.vacuum(output, retention_hours=0)
    assert len(removed["masks"]) == files
    again = _read(output, "masks").to_pyarrow_table()
    assert again.sort_by(ORDER).equals(rows)
    assert np.isfinite(_read(output, "embeddings").to_pyarrow_table()["embedding"][0].values.to_numpy()).all()
