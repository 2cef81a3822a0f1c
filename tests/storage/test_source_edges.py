"""Local sources that are not just files: named pipes, unreadable and linked folders, reads that hang."""

import os
import threading
import time
from datetime import UTC, datetime

import pytest

from schemas import RunLayout, parse_job
from schemas.errors import NotAFileError, ReadDeadlineError
from tests.support.helpers import plan_for, scene_bytes
from workers import runs
from workers.labelling.labeler import Labeler
from workers.outputs import report
from workers.runs.planner import list_source
from workers.storage import LocalStore, read_with_deadline


def _source(tmp_path):
    src = tmp_path / "src"
    (src / "cams").mkdir(parents=True)
    (src / "cams/a.jpg").write_bytes(scene_bytes(1))
    (src / "b.jpg").write_bytes(scene_bytes(2))
    os.mkfifo(src / "cams/pipe.jpg")  # opening it for reading would wait for a writer forever
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "c.jpg").write_bytes(scene_bytes(3))
    os.symlink(elsewhere, src / "linked")
    return src


def test_a_named_pipe_gets_an_unsupported_row_and_never_blocks(tmp_path):
    src = _source(tmp_path)
    job = parse_job({"source": {"uri": str(src)}, "output": str(tmp_path / "out")}, environ={})
    plan = plan_for(job, "fifo")
    assert plan.objects == 3 and plan.list_errors.model_dump() == {
        "count": 1,
        "first": ["linked: a symbolic link to a folder, not followed"],
    }
    t0 = time.perf_counter()
    summary = Labeler(job).label_shard("fifo", 0)
    assert time.perf_counter() - t0 < 60
    assert (summary.objects, summary.labelled, summary.errors_by_kind) == (3, 2, {"unsupported": 1})
    out = LocalStore(tmp_path / "out")
    manifest = runs.commit_run(job, out, RunLayout("fifo"), "test", datetime.now(UTC), report.at_commit)
    assert manifest.summary.list_errors.count == 1
    page = (tmp_path / "out/runs/fifo/report.html").read_text()
    assert "Not listed:</b> 1 problem(s) listing" in page and "linked: a symbolic link to a folder" in page
    with pytest.raises(NotAFileError, match=r"cams/pipe\.jpg is a named pipe \(FIFO\); only regular files are read"):
        LocalStore(src).read("cams/pipe.jpg")


def test_folders_that_cannot_be_listed_are_reported(tmp_path, monkeypatch):
    src = _source(tmp_path)
    (src / "locked").mkdir()
    (src / "locked/d.jpg").write_bytes(scene_bytes(4))
    real = os.scandir

    def scandir(path=None):  # what a chmod 000 folder does to anyone but root
        if str(path).endswith("/locked"):
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    skipped: list[str] = []
    job = parse_job({"source": {"uri": str(src)}, "output": str(tmp_path / "out")}, environ={})
    listing = list_source(LocalStore(src), job.source, skipped=skipped)
    assert listing["key"].to_pylist() == ["b.jpg", "cams/a.jpg", "cams/pipe.jpg"]
    assert skipped == ["linked: a symbolic link to a folder, not followed", "locked: Permission denied"]


def test_a_read_that_hangs_becomes_a_read_error_row(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("a.jpg", "hang.jpg", "z.jpg"):
        (src / name).write_bytes(scene_bytes(len(name)))
    release = threading.Event()

    class Hanging(LocalStore):
        def read(self, key, max_bytes=None):
            if key == "hang.jpg":
                release.wait()  # a hung network mount: no signal interrupts it
            return super().read(key, max_bytes)

    job = parse_job(
        {"source": {"uri": str(src)}, "output": str(tmp_path / "out"), "storage": {"object_timeout_s": 1.5}},
        environ={},
    )
    plan_for(job, "hang")
    try:
        t0 = time.perf_counter()
        summary = Labeler(job, source=Hanging(src)).label_shard("hang", 0)
        assert time.perf_counter() - t0 < 30
    finally:
        release.set()
    assert (summary.objects, summary.labelled, summary.errors_by_kind) == (3, 2, {"read_error": 1})


def test_read_with_deadline_passes_results_and_errors_through(tmp_path):
    (tmp_path / "a.bin").write_bytes(b"abc")
    store = LocalStore(tmp_path)
    data, info = read_with_deadline(store, "a.bin", None, 5)
    assert (data, info.size) == (b"abc", 3)
    with pytest.raises(NotAFileError):
        os.mkfifo(tmp_path / "p")
        read_with_deadline(store, "p", None, 5)

    class Slow(LocalStore):
        def read(self, key, max_bytes=None):
            time.sleep(3)
            return super().read(key, max_bytes)

    with pytest.raises(ReadDeadlineError, match=r"a\.bin: not read within 0\.2 s \(storage\.object_timeout_s\)"):
        read_with_deadline(Slow(tmp_path), "a.bin", None, 0.2)
