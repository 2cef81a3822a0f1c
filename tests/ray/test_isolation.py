"""An object that kills its actor every time is isolated: recorded as worker_lost, the rest labelled."""

import pytest

from schemas import RunLayout, parse_job
from tests.support import ROOT
from tests.support.helpers import plan_for, scene_bytes
from workers.labelling.labeler import Labeler
from workers.ray.cluster import private_cluster
from workers.ray.pool import LabelerPool
from workers.runs import attempts
from workers.runs.plan import read_shard_list
from workers.storage import LocalStore
from workers.storage.files import read_parquet

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def poisoned_cluster():
    """A private cluster whose workers die decoding b"POISON..." (tests.support.poison)."""
    root = str(ROOT)  # where the tests package is, for the workers
    hook = {"worker_process_setup_hook": "tests.support.poison.install", "env_vars": {"PYTHONPATH": root}}
    with private_cluster(num_cpus=2, runtime_env=hook):
        yield


def test_an_object_that_kills_its_actor_is_isolated(tmp_path, poisoned_cluster):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(8):
        (src / f"{i}.jpg").write_bytes(b"POISON" if i == 3 else scene_bytes(200 + i))
    job = parse_job(
        {
            "source": {"uri": str(src)},
            "output": str(tmp_path / "out"),
            "compute": {"shard_size": 8, "num_actors": 1, "cpus_per_actor": 1, "batch_size": 2},
        },
        environ={},
    )
    plan_for(job, "iso")
    layout, out = RunLayout("iso"), LocalStore(tmp_path / "out")
    with LabelerPool(job) as pool:
        summary = pool.label("iso", 0)
    # 2 deaths on the whole shard, then halves: [0,4) dies once, [2,4) once, [3,4) twice.
    assert pool.redispatched == 6
    assert (summary.objects, summary.labelled, summary.errors_by_kind) == (8, 7, {"worker_lost": 1})
    assert attempts.read_marker(out, layout, 0).summary == summary
    images = read_parquet(out, layout.table("images", 0), "images").to_pylist()
    assert [r["key"] for r in images] == [f"{i}.jpg" for i in range(8)]  # every object once, in order
    lost = images[3]
    assert lost["status"] == "worker_lost" and "3.jpg" in lost["error"] and "died twice" in lost["error"]
    assert all(r["status"] == "ok" for i, r in enumerate(images) if i != 3)
    # The other objects' masks are what one uninterrupted Labeler makes of them: the same masks; the
    # box scores to float rounding, since the parts put some images in batches with other neighbours.
    direct = Labeler(job).label_objects(layout, 0, read_shard_list(out, layout, 0)).masks.to_pylist()
    published = read_parquet(out, layout.table("masks", 0), "masks").to_pylist()
    assert len(published) == len(direct) > 0
    for a, b in zip(published, direct, strict=True):
        assert a["score"] == pytest.approx(b["score"], abs=1e-5)
        assert {k: v for k, v in a.items() if k != "score"} == {k: v for k, v in b.items() if k != "score"}
