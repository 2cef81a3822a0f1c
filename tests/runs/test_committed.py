"""Readers of a committed run trust only what its manifest names: export, report, status and the index."""

import json
import re
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from flows.cli import main
from schemas import RunLayout
from schemas.errors import RunDamagedError
from tests.support.synthetic_run import make_run
from workers.runs import index
from workers.runs.committed import CommittedRun
from workers.storage import LocalStore


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    out = LocalStore(tmp_path_factory.mktemp("committed") / "out")
    make_run(out, "run", n_images=20, masks_per_image=3, shard_size=8)
    return out


@pytest.fixture
def run_copy(pristine, tmp_path):
    shutil.copytree(pristine.root, tmp_path / "out")
    return LocalStore(tmp_path / "out")


def _runs(out: LocalStore):
    return out.root / "runs/run"


def _swap_masks(out: LocalStore) -> None:
    """Shard 0's masks file replaced by shard 1's (both are valid tables of the run)."""
    shutil.copyfile(_runs(out) / "masks/shard-00001.parquet", _runs(out) / "masks/shard-00000.parquet")


def _truncate_images(out: LocalStore) -> None:
    path = _runs(out) / "images/shard-00002.parquet"
    path.write_bytes(path.read_bytes()[:-100])


def _remove_masks(out: LocalStore) -> None:
    (_runs(out) / "masks/shard-00001.parquet").unlink()


def _summaries(out: LocalStore) -> pa.Table:
    return pq.read_table(_runs(out) / "summaries.parquet")


def _rewrite_summaries(out: LocalStore, rows: list[int]) -> None:
    """summaries.parquet with only these rows, in this order (footer and schema kept)."""
    t = _summaries(out)
    pq.write_table(t.take(rows), _runs(out) / "summaries.parquet")


DAMAGE = {
    "swapped": (_swap_masks, r"masks/shard-00000\.parquet holds run run shard 1 attempt \w+ with \d+ rows, but the "
                r"manifest names run run shard 0"),
    "truncated": (_truncate_images, r"images/shard-00002\.parquet is not a readable"),
    "missing": (_remove_masks, r"masks/shard-00001\.parquet is missing"),
    "summaries cut": (lambda out: _rewrite_summaries(out, [0]),
                      r"runs/run/summaries\.parquet holds 1 shard\(s\) of run run, but the plan has 3 of run run"),
    "summaries reordered": (lambda out: _rewrite_summaries(out, [1, 0, 2]),
                            r"runs/run/summaries\.parquet: row 0 is not shard 0's state \(it names shard 1\)"),
    "summaries missing": (lambda out: (_runs(out) / "summaries.parquet").unlink(),
                          r"runs/run/summaries\.parquet is missing"),
    "summaries garbage": (lambda out: (_runs(out) / "summaries.parquet").write_bytes(b"garbage"),
                          r"runs/run/summaries\.parquet is not a readable Parquet file"),
}  # fmt: skip


@pytest.mark.parametrize("damage", DAMAGE)
def test_a_damaged_file_is_an_error_naming_it_in_every_reader(run_copy, tmp_path, capsys, damage):
    breaks, message = DAMAGE[damage]
    breaks(run_copy)
    capsys.readouterr()
    for args in (
        ["export", "run", "--output", run_copy.uri, "--to", "coco", "--dest", str(tmp_path / "coco")],
        ["status", "run", "--output", run_copy.uri],
        ["report", "run", "--output", run_copy.uri],
    ):
        assert main(args) == 2, args
        out = capsys.readouterr()
        lines = out.err.strip().splitlines()
        assert len(lines) == 1 and re.search(message, lines[0]), (args, lines)
        assert "restore them, or label again under a new run id" in lines[0] and out.out == ""
    assert not (tmp_path / "coco").exists()  # nothing exported from a damaged run


def test_the_index_of_an_output_before_the_index_reads_only_checked_files(run_copy):
    shutil.rmtree(run_copy.root / "index")  # an output written before the index existed
    assert len(index.load(run_copy)) == 20  # every object (a decode error is final, so it is indexed too)
    shutil.rmtree(run_copy.root / "index", ignore_errors=True)
    _swap_masks(run_copy)  # the masks table is not read to index; the images tables are
    (_runs(run_copy) / "images/shard-00000.parquet").write_bytes(b"garbage")
    with pytest.raises(RunDamagedError, match=r"images/shard-00000\.parquet is not a readable images table"):
        index.load(run_copy)


def test_a_garbage_manifest_is_one_line(run_copy, capsys):
    (_runs(run_copy) / "manifest.json").write_text('{"run_id": "run", "shards": 3}')
    capsys.readouterr()
    assert main(["status", "run", "--output", run_copy.uri]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert re.fullmatch(
        r"error: .*runs/run/manifest\.json is not a valid run manifest \(\d+ problem\(s\), first: \w+: .*\); it was "
        r"changed or damaged after it was written: restore it, or label again under a new run id",
        err[0],
    )


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda m: m["job"]["source"].update(uri="s3://elsewhere/in"), r"its job differs from the one that planned "
                                                                       r"the run in \['source\.uri'\]"),
        (lambda m: m["fingerprint"].update(prompts=["cat"]), r"fingerprint differs from the plan's in \['prompts'\]"),
        (lambda m: m.update(run_id="other"), r"it names run 'other', the plan 'run'"),
        (lambda m: m.update(summaries="runs/other/summaries.parquet"), r"manifest\.json names "
                                                                     r"'runs/other/summaries\.parquet', not "
                                                                     r"'runs/run/summaries\.parquet'"),
    ],
)  # fmt: skip
def test_a_manifest_edited_to_point_elsewhere_is_refused(run_copy, edit, message):
    path = _runs(run_copy) / "manifest.json"
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest))
    with pytest.raises(RunDamagedError, match=message):
        CommittedRun(run_copy, "run")
    assert main(["report", "run", "--output", run_copy.uri]) == 2


def test_an_intact_run_reads_and_verifies(run_copy, capsys):
    run = CommittedRun(run_copy, "run")
    run.verify()
    assert [s.shard_id for s in run.shards()] == [0, 1, 2]
    assert main(["status", "run", "--output", run_copy.uri]) == 0
    assert json.loads(capsys.readouterr().out)["state"] == "committed"
    assert RunLayout("run").manifest == "runs/run/manifest.json"


def _as_legacy(out: LocalStore) -> dict:
    """The run as committed before summaries.parquet: its shards' states inline in manifest.json."""
    path = _runs(out) / "manifest.json"
    manifest = json.loads(path.read_text())
    t = _summaries(out)
    manifest["shards"] = [
        {"shard_id": sid, "attempt_id": attempt, "summary": json.loads(text)}
        for sid, attempt, text in zip(*(t[c].to_pylist() for c in ("shard_id", "attempt_id", "summary")), strict=True)
    ]
    del manifest["summaries"]
    path.write_text(json.dumps(manifest))
    (_runs(out) / "summaries.parquet").unlink()
    return manifest


def test_a_run_committed_before_summaries_parquet_reads_from_its_manifest(run_copy, pristine, tmp_path):
    now = CommittedRun(pristine, "run")
    expected = [(r.shard_id, r.images, r.masks) for r in now.shards()]
    _as_legacy(run_copy)
    old = CommittedRun(run_copy, "run")
    old.verify()
    assert list(old.states) == list(now.states) and old.states[2] == now.states[2]
    assert [(r.shard_id, r.images, r.masks) for r in old.shards()] == expected
    assert main(["export", "run", "--output", run_copy.uri, "--to", "coco", "--dest", str(tmp_path / "coco")]) == 0
    assert main(["report", "run", "--output", run_copy.uri]) == 0


def test_a_legacy_manifest_that_lists_other_shards_is_refused(run_copy):
    manifest = _as_legacy(run_copy)
    manifest["shards"] = manifest["shards"][:1]
    (_runs(run_copy) / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(RunDamagedError, match=r"does not match the run's plan: it lists shards \[0\], the plan 0\.\.2"):
        CommittedRun(run_copy, "run")
