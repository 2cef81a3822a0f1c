"""One layout for every key of a run: built and parsed in one place."""

import pytest

from schemas.errors import LayoutError
from schemas.layout import RunLayout, check_run_id, index_base_key, index_part_key, parse_index_key, parse_shard, run_of
from workers.runs import new_run_id


@pytest.mark.parametrize("run_id, ok", [("2026-11-21T03.00", True), ("a", True), ("../x", False), ("", False)])
def test_run_id(run_id, ok):
    if ok:
        assert check_run_id(run_id) == run_id
    else:
        with pytest.raises(LayoutError, match="letters, digits"):
            check_run_id(run_id)


def test_every_key_of_a_run():
    r = RunLayout("r1")
    assert (r.prefix, r.plan, r.manifest, r.success) == (
        "runs/r1/",
        "runs/r1/plan.json",
        "runs/r1/manifest.json",
        "runs/r1/_SUCCESS",
    )
    assert r.shard_list(3) == "runs/r1/shards/shard-00003.parquet"
    assert r.table("masks", 12) == "runs/r1/masks/shard-00012.parquet"
    assert r.done(123456) == "runs/r1/done/shard-123456.json"
    assert r.staged("ab12", "images", 7) == "runs/r1/_attempts/ab12/images/shard-00007.parquet"
    assert r.lease(4) == "runs/r1/lease/000004.json" and RunLayout.lease_generation(r.lease(4)) == 4
    assert r.probe("x1").startswith("runs/r1/_preflight-")
    for key in (r.shard_list(3), r.table("masks", 3), r.done(3), r.staged("ab12", "prompts", 3)):
        assert parse_shard(key) == 3
    assert parse_shard(r.plan) is None and parse_shard("runs/r1/done/shard-1.json") is None
    assert run_of(r.success) == "r1" and run_of("index/part-r1.parquet") is None
    assert parse_index_key(index_part_key("r1")) == ("part", "r1")
    assert parse_index_key(index_base_key("r2")) == ("base", "r2")
    assert parse_index_key("index/other.parquet") is None


@pytest.mark.parametrize(
    "call",
    [
        lambda: RunLayout("../up"),
        lambda: RunLayout("r").table("secrets", 0),
        lambda: RunLayout("r").table("masks", -1),
        lambda: RunLayout("r").done(True),
        lambda: RunLayout("r").staged("../x", "masks", 0),
    ],
)
def test_bad_parts_are_refused(call):
    with pytest.raises(LayoutError):
        call()


def test_new_run_ids_are_unique_and_valid():
    ids = {new_run_id() for _ in range(200)}
    assert len(ids) == 200 and all(check_run_id(i) for i in ids)
