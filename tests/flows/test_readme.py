"""The README's code for reading results runs on real output tables (pyarrow, polars, duckdb)."""

import re
from datetime import UTC, datetime

from schemas import RunLayout, parse_job
from tests.support import ROOT
from tests.support.helpers import scene_bytes
from tests.support.ray_support import plan
from workers.labelling.labeler import Labeler
from workers.outputs import report
from workers.runs import commit_run
from workers.storage import open_store

README = (ROOT / "README.md").read_text()


def _block_after(heading: str) -> str:
    section = README[README.index(heading) :]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_reading_the_results_snippet(tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(3):
        (src / f"{i}.png").write_bytes(scene_bytes(i, fmt="PNG"))
    (src / "broken.png").write_bytes(b"")
    job = parse_job(
        {
            "source": {"uri": str(src)},
            "output": str(tmp_path / "out"),
            "prompts": ["red", "blue", "green", "yellow"],
            "clip": {"arch": "color-words"},
            "selection": {"threshold": 0.3},
        },
        environ={},
    )
    labeler = Labeler(job)
    for i in range(plan(job, "r")):
        labeler.label_shard("r", i)
    labeler.label_shard("r", 0)  # a repeated attempt changes nothing
    manifest = commit_run(job, open_store(job.output), RunLayout("r"), "test", datetime.now(UTC), report.at_commit)
    scope = {"RUN": str(tmp_path / "out/runs/r")}
    exec(_block_after("### Reading the results"), scope)
    assert scope["masks"].num_rows == manifest.summary.counts.masks  # each mask once, from the counted attempt
    assert scope["m"].shape == (160, 192) and scope["m"].sum() == scope["row"]["area"]
    assert scope["per_label"]["masks"].sum() == scope["masks"].num_rows
    assert scope["failed"]["status"].to_list() == ["decode_error"]
    shown = capsys.readouterr().out
    assert "label_score" in shown and any(c in shown for c in ("red", "blue", "green", "yellow"))
