"""`fastsam-label status` on a run in progress, and the run report, without Ray or Prefect."""

import json

from flows.cli import main
from flows.label import report_markdown
from schemas import RunSummary, parse_job
from tests.support.helpers import plan_for, scene_bytes
from workers.labelling.labeler import Labeler


def test_status_of_an_unfinished_run_and_its_report(tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(3):
        (src / f"{i}.jpg").write_bytes(scene_bytes(i))
    (src / "bad.jpg").write_bytes(b"text")
    job = parse_job({"source": {"uri": str(src)}, "output": str(tmp_path / "out"), "compute": {"shard_size": 2}}, {})
    plan = plan_for(job, "half")
    assert plan.shards == 2
    first = Labeler(job).label_shard("half", 0)
    capsys.readouterr()
    assert main(["status", "half", "--output", str(tmp_path / "out")]) == 1
    status = json.loads(capsys.readouterr().out)
    assert status["state"] == "incomplete" and (status["shards_planned"], status["shards_done"]) == (2, 1)
    assert status["counts"]["objects"] == 2 == first.objects and status["counts"]["listed"] == 4
    assert status["output"] == (tmp_path / "out/runs/half").as_uri()

    summary = RunSummary.of_shards(
        "half", "out", "failed", 2, plan, [first], failed_shards={1: "ShardError: boom"}, seconds=2.0,
        labelled_now=2, images_per_second=1.0,
    )  # fmt: skip
    md = report_markdown(summary)
    assert "`half`: failed" in md and "- 1: ShardError: boom" in md
    assert f"| 2 | 2 | 0 | {first.masks} | 0 | 0 | 0 | 0 | 2.0 | 1.0 |" in md
