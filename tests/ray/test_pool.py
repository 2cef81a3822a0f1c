"""The Ray actor pool on a local cluster: 2 actors, same tables as one Labeler, actors killed mid-run."""

import pytest

from schemas.errors import ShardError
from tests.support.ray_support import first_read, make_job, map_in_background, plan, read_table, upload_scenes
from workers.labelling.labeler import Labeler
from workers.ray.cluster import private_cluster
from workers.ray.pool import LabelerPool
from workers.ray.raydata import BatchLabeler

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def cluster(s3_endpoint):
    """A private local Ray cluster; started after the S3 fixture so its workers inherit the credentials."""
    with private_cluster(num_cpus=2):
        yield


@pytest.fixture(scope="module")
def source(s3_endpoint, cluster):
    import boto3

    bucket = "pool-src"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=bucket)
    keys = upload_scenes(s3_endpoint, bucket, 24)
    return bucket, keys


def test_two_actors_write_the_same_tables_as_one_labeler(s3_endpoint, source):
    bucket, keys = source
    job = make_job(s3_endpoint, bucket, "pooled", shard_size=3, num_actors=2, cpus_per_actor=1)
    n = plan(job, "r")
    with LabelerPool(job) as pool:
        results = dict(pool.map("r", range(n)))
    assert sorted(results) == list(range(n)) == list(range(8))
    assert not [r for r in results.values() if isinstance(r, Exception)]
    assert len({r.worker for r in results.values()}) == 2  # both actors took shards
    assert sum(r.objects for r in results.values()) == len(keys)

    direct_job = make_job(s3_endpoint, bucket, "direct", shard_size=3, cpus_per_actor=1)  # the same torch threads
    plan(direct_job, "r")
    labeler = Labeler(direct_job)
    for i in range(n):
        labeler.label_shard("r", i)
    for name in ("images", "masks"):
        pooled, direct = read_table(job, "r", name), read_table(direct_job, "r", name)
        assert pooled.num_rows == direct.num_rows > 0
        assert pooled.equals(direct), name  # whichever actor did the work, the rows are the same
    images = read_table(job, "r", "images").to_pylist()
    assert sorted(r["key"] for r in images) == sorted(k.removeprefix("src/") for k in keys)


def test_a_killed_actor_loses_no_shard(s3_endpoint, source):
    bucket, keys = source
    job = make_job(s3_endpoint, bucket, "killed", shard_size=12, num_actors=2, cpus_per_actor=1)
    n = plan(job, "k")
    with LabelerPool(job) as pool:
        ray.get([a.ready.remote() for a in pool._actors])
        with first_read(f"{bucket}/src/") as reading:
            thread, done = map_in_background(pool, "k", n)
            assert reading.wait(timeout=120)  # an actor is reading its shard's images now
            for actor in pool._actors:  # kill both mid-shard; Ray restarts them
                ray.kill(actor, no_restart=False)
            thread.join(timeout=600)
    assert sorted(done) == [0, 1]
    assert all(not isinstance(v, Exception) for v in done.values()), done
    assert pool.redispatched >= 1
    images = read_table(job, "k", "images").to_pylist()
    assert sorted(r["key"] for r in images) == sorted(k.removeprefix("src/") for k in keys)  # each once


def test_a_labeler_error_is_reported_not_retried(s3_endpoint, source):
    bucket, _ = source
    job = make_job(s3_endpoint, bucket, "unplanned", num_actors=1)
    with LabelerPool(job) as pool:
        with pytest.raises(ShardError, match=r"shard 0 of run nope.*plan the run first"):
            pool.label("nope", 0)
        assert pool.redispatched == 0


def test_ray_data_map_batches(s3_endpoint, source):
    import boto3
    import numpy as np

    bucket, keys = source
    job = make_job(s3_endpoint, bucket, "unused")
    client = boto3.client("s3", endpoint_url=s3_endpoint)
    items = [{"bytes": client.get_object(Bucket=bucket, Key=k)["Body"].read(), "path": k} for k in keys[:6]]
    items.append({"bytes": b"not an image", "path": "bad.jpg"})
    ds = ray.data.from_items(items).map_batches(
        BatchLabeler, fn_constructor_args=(job,), batch_size=4, concurrency=1, batch_format="numpy"
    )
    rows = sorted(ds.take_all(), key=lambda r: r["key"])
    assert [r["key"] for r in rows] == sorted(k for k in [*keys[:6], "bad.jpg"])
    status = {r["key"]: r["status"] for r in rows}
    assert status.pop("bad.jpg") == "unsupported" and set(status.values()) == {"ok"}
    direct = BatchLabeler(job)({"bytes": np.array([items[0]["bytes"]], dtype=object), "path": np.array([keys[0]])})
    via_ray = next(r for r in rows if r["key"] == keys[0])
    assert [m["rle_counts"] for m in via_ray["masks"]] == [m["rle_counts"] for m in direct.to_pylist()[0]["masks"]]
