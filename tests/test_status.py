"""`fastsam-label status` on a run in progress, and the run report, without Ray or Prefect."""

import json

from flows.cli import main
from flows.label import report_markdown, summarize
from schemas import parse_job
from tests.helpers import scene_bytes
from workers import runs
from workers.labeler import Labeler
from workers.store import LocalStore


def test_status_of_an_unfinished_run_and_its_report(tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(3):
        (src / f"{i}.jpg").write_bytes(scene_bytes(i))
    (src / "bad.jpg").write_bytes(b"text")
    job = parse_job({"source": {"uri": str(src)}, "output": str(tmp_path / "out"), "compute": {"shard_size": 2}}, {})
    out = LocalStore(tmp_path / "out")
    plan = runs.plan_run(job, LocalStore(src), out, "half")
    assert plan.shards == 2
    first = Labeler(job).label_shard("half", 0)
    assert main(["status", "half", "--output", str(tmp_path / "out")]) == 1
    out_text = capsys.readouterr().out
    status = json.loads(out_text[out_text.index("{\n") :])  # after the model's load line
    assert status["state"] == "incomplete" and status["shards"] == {"planned": 2, "done": 1}
    assert status["counts"]["objects"] == 2 == first.objects

    summary = summarize(job, "half", plan, {0: first}, {1: "ShardError: boom"}, seconds=2.0, labelled_now=2)
    assert summary["state"] == "failed" and summary["images_per_second"] == 1.0
    md = report_markdown(summary)
    assert "`half`: failed" in md and "- 1: ShardError: boom" in md
    assert f"| 2 | 2 | 0 | {first.masks} | 0 | 2.0 | 1.0 |" in md
