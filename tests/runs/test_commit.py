"""The shard commit protocol: one attempt counts; late, losing and half-finished attempts change nothing."""

import os
import time
from datetime import UTC, datetime

import pyarrow.dataset as ds
import pytest

from schemas import RunLayout, parse_job
from schemas.errors import RunIncompleteError, StoreError, StoreUnavailableError
from tests.support.helpers import plan_for, scene_bytes, with_attempt_file
from workers import runs
from workers.labelling.labeler import Labeler
from workers.outputs import report
from workers.runs import attempts
from workers.runs.committed import CommittedRun
from workers.runs.plan import read_shard_list
from workers.storage import LocalStore, ObjectInfo
from workers.storage.files import read_parquet

RUN = RunLayout("r")


class UnreachableSource(LocalStore):
    """A source whose every read fails as a partitioned node's would."""

    def read(self, key: str, max_bytes: int | None = None) -> tuple[bytes, ObjectInfo]:
        raise StoreUnavailableError(f"{self.uri_of(key)}: ReadTimeoutError after 8 attempts")


def _snapshot(root) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def planned(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(6):
        (src / f"{i}.jpg").write_bytes(scene_bytes(i))
    job = parse_job({"source": {"uri": str(src)}, "output": str(tmp_path / "out"), "compute": {"shard_size": 3}}, {})
    plan_for(job, RUN.run_id)
    return job, LocalStore(tmp_path / "out")


def _commit(job, out):
    return runs.commit_run(job, out, RUN, "test", datetime.now(UTC), report.at_commit)


def test_a_zombie_attempt_that_finishes_late_leaves_the_markers_attempt(planned):
    job, out = planned
    objects = read_shard_list(out, RUN, 0)
    # An actor thought lost (a partitioned node) labels shard 0 slowly, every read failing ...
    zombie = Labeler(job, source=UnreachableSource(job.source.uri))
    t0 = time.perf_counter()
    zombie_attempt = attempts.new_attempt_id()
    zombie_part = zombie.label_objects(RUN, 0, objects)
    assert set(zombie_part.images["status"].to_pylist()) == {"read_error"}
    # ... while its replacement finishes first.
    winner = Labeler(job).label_shard(RUN.run_id, 0)
    published = read_parquet(out, RUN.table("images", 0), "images")
    late = attempts.commit_part(out, RUN, 0, zombie_attempt, zombie_part, t0)
    assert late == winner  # the late attempt learns which attempt counts
    assert read_parquet(out, RUN.table("images", 0), "images").equals(published)
    assert set(published["status"].to_pylist()) == {"ok"}
    assert attempts.published_attempt(out, RUN.table("masks", 0)) == winner.attempt_id
    assert not [o for o in out.list(RUN.attempts_prefix) if f"/{zombie_attempt}/" in o.key]
    Labeler(job).label_shard(RUN.run_id, 1)
    manifest = _commit(job, out)
    states = CommittedRun(out, RUN.run_id).states
    assert states[0].attempt_id == winner.attempt_id
    assert list(out.list(RUN.attempts_prefix)) == []
    # After _SUCCESS, a late attempt (even one that races the marker) changes nothing.
    before = _snapshot(out.root / "runs/r")
    assert attempts.commit_part(out, RUN, 0, attempts.new_attempt_id(), zombie_part, t0) == winner
    assert Labeler(job).label_shard(RUN.run_id, 1) == states[1].summary
    assert _commit(job, out) == manifest
    assert _snapshot(out.root / "runs/r") == before
    # The README's simple reading sees each object once.
    images = ds.dataset(str(out.root / "runs/r/images"), format="parquet").to_table()
    assert sorted(images["key"].to_pylist()) == [f"{i}.jpg" for i in range(6)]


def test_an_attempt_that_died_before_publishing_is_repaired_at_commit(planned, monkeypatch):
    job, out = planned
    labeler = Labeler(job)

    def die(output, marker):
        raise RuntimeError("the actor died here")

    monkeypatch.setattr(attempts, "publish", die)
    with pytest.raises(RuntimeError, match="died here"):
        labeler.label_shard(RUN.run_id, 0)
    monkeypatch.undo()
    marker = attempts.read_marker(out, RUN, 0)
    assert marker is not None and out.head(RUN.table("images", 0)) is None  # done, but nothing published
    labeler.label_shard(RUN.run_id, 1)
    manifest = _commit(job, out)
    for f in marker.files.values():
        assert attempts.published_attempt(out, f.key) == marker.attempt_id
    assert manifest.summary.counts.objects == 6


def test_a_foreign_published_file_is_replaced_and_a_lost_one_fails_the_commit(planned):
    job, out = planned
    labeler = Labeler(job)
    for i in range(2):
        labeler.label_shard(RUN.run_id, i)
    marker = attempts.read_marker(out, RUN, 1)
    # A published file from another attempt (say, a writer of an older version of this code).
    with_attempt_file(out, RUN.table("masks", 1), marker.files["masks"].staged, "0123456789abcdef")
    assert attempts.published_attempt(out, RUN.table("masks", 1)) == "0123456789abcdef"
    assert attempts.settle(out, RUN, marker) == 1
    assert attempts.published_attempt(out, RUN.table("masks", 1)) == marker.attempt_id
    # When the marker's own copy is gone too, nothing can prove the file: the commit refuses.
    out.delete(RUN.table("images", 0))
    out.delete(attempts.read_marker(out, RUN, 0).files["images"].staged)
    with pytest.raises(attempts.ShardCommitError, match=r"shard 0 of run r: its images table .*delete the marker"):
        _commit(job, out)
    assert out.head(RUN.success) is None


def test_a_full_disk_gives_a_clear_error_no_success_and_a_resume_completes(planned, monkeypatch):
    job, out = planned
    import workers.storage.local as store_module

    real = store_module.tempfile.mkstemp

    def mkstemp(prefix, dir):  # files of the masks table land on a full device
        if "masks" in str(dir):
            return os.open("/dev/full", os.O_WRONLY), str(dir) + "/.fastsam-tmp-full"
        return real(prefix=prefix, dir=dir)

    monkeypatch.setattr(store_module.tempfile, "mkstemp", mkstemp)
    with pytest.raises(StoreError) as e:
        Labeler(job).label_shard(RUN.run_id, 0)
    assert "No space left on device; free space on that disk, then run again to resume" in str(e.value)
    assert "masks" in str(e.value)
    monkeypatch.undo()
    assert attempts.read_marker(out, RUN, 0) is None
    with pytest.raises(RunIncompleteError, match=r"shards \[0, 1\] are not done"):
        _commit(job, out)
    assert out.head(RUN.success) is None
    labeler = Labeler(job)
    for i in range(2):
        labeler.label_shard(RUN.run_id, i)
    manifest = _commit(job, out)
    assert manifest.summary.counts.objects == 6 and out.head(RUN.success) is not None
