"""The run report: self-contained, bounded, and checked in a real headless Chromium (Debian's, via Playwright)."""

import re
import shutil
from datetime import UTC, datetime

import numpy as np
import pytest
from PIL import Image

from flows.cli import main
from schemas import RunLayout, parse_job
from tests.support.helpers import plan_for, scene_bytes
from tests.support.tools import CHROMIUM_ARGS, chromium
from workers.labelling.labeler import Labeler
from workers.outputs import report
from workers.outputs.report import PALETTE
from workers.runs import commit_run
from workers.storage import LocalStore

BROKEN = "broken <b>x<i>.jpg"  # markup in a key must be shown as text, never run as markup


@pytest.fixture(scope="module")
def committed(tmp_path_factory):
    """A committed run of a local folder: 14 scenes, a file with markup in its name, an empty PNG."""
    root = tmp_path_factory.mktemp("report")
    src = root / "src"
    src.mkdir()
    for i in range(14):
        (src / f"scene-{i:02d}.jpg").write_bytes(scene_bytes(700 + i, 240, 320))
    (src / BROKEN).write_bytes(b"text")
    (src / "empty.png").write_bytes(b"")
    job = parse_job(
        {
            "source": {"uri": str(src)},
            "output": str(root / "out"),
            "prompts": ["red", "blue", "green", "yellow"],
            "clip": {"arch": "color-words"},
            "selection": {"threshold": 0.3},
            "compute": {"shard_size": 5},
        },
        environ={},
    )
    plan = plan_for(job, "rep")
    labeler = Labeler(job)
    for i in range(plan.shards):
        labeler.label_shard("rep", i)
    commit_run(job, LocalStore(root / "out"), RunLayout("rep"), "test", datetime.now(UTC), report.at_commit)
    return root


def test_the_report_is_written_at_commit_self_contained_and_bounded(committed):
    page = (committed / "out/runs/rep/report.html").read_text()
    assert len(page.encode()) < 5 * 2**20
    assert not re.search(r"https?://", page) and "<script" not in page  # nothing to fetch, nothing to run
    assert re.findall(r'(?:src|href)="([a-z]+):', page) and set(re.findall(r'(?:src|href)="([a-z]+):', page)) == {
        "data"
    }
    assert "broken &lt;b&gt;x&lt;i&gt;.jpg" in page and "<b>x<i>" not in page
    assert page.count('<figure class="thumb"><svg') >= 12 + 1  # the sample and more, each with its masks
    assert "Detector score" in page and "Stability" in page and "log scale" in page and "Masks per label" in page


def test_the_rows_a_streamed_commit_keeps_make_the_report_of_every_row(committed, monkeypatch):
    from workers.runs.committed import CommittedRun

    monkeypatch.setattr(report, "SAMPLE", 4)  # fewer than the ok images, so the sample is a choice
    monkeypatch.setattr(report, "MAX_ERRORS", 1)  # and the error table is cut
    run = CommittedRun(LocalStore(committed / "out"), "rep")
    images = [run.table("images", state) for state in run.states]
    kept = report.ReportRows(run.states)
    for t in images:
        kept.add(t)
    assert kept.table().num_rows < sum(t.num_rows for t in images)
    source = LocalStore(committed / "src")
    whole = report.build(run.output, source, run.layout, run.manifest, run.states, images)
    assert report.build(run.output, source, run.layout, run.manifest, run.states, [kept.table()]) == whole
    assert "and 1 more in the images table" in whole


def test_the_report_in_chromium(committed, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    executable = chromium()
    console, failed, schemes = [], [], set()
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.on("console", lambda m: console.append((m.type, m.text)))
        page.on("pageerror", lambda e: console.append(("pageerror", str(e))))
        page.on("requestfailed", lambda r: failed.append(r.url))
        page.on("request", lambda r: schemes.add(r.url.split(":", 1)[0]))
        page.goto((committed / "out/runs/rep/report.html").as_uri(), wait_until="load")
        errors_text = page.locator("table.errors").inner_text()
        page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
        page.add_style_tag(content=".thumb svg path, .thumb svg text { display: none }")  # the same page, bare
        page.screenshot(path=str(tmp_path / "bare.png"), full_page=True)
        browser.close()
    assert [m for m in console if m[0] in ("error", "pageerror")] == [] and failed == []
    assert schemes <= {"file", "data"}
    assert BROKEN in errors_text and "empty.png" in errors_text and "unsupported" in errors_text

    def near(name: str, color) -> int:
        shot = np.asarray(Image.open(tmp_path / name).convert("RGB")).astype(np.int16)
        return int((np.abs(shot - np.array(color, np.int16)).max(axis=2) <= 12).sum())

    for color in PALETTE[:4]:  # the first masks of every thumbnail are outlined and labelled in these
        drawn, bare = near("report.png", color), near("bare.png", color)
        assert drawn - bare >= 1000, (color, drawn, bare)  # pixels of that colour that the overlays add


def test_the_report_command_rewrites_it_and_survives_a_missing_source(committed, tmp_path, capsys):
    root = tmp_path / "copy"
    shutil.copytree(committed, root)
    report = root / "out/runs/rep/report.html"
    before = report.read_text()
    out_copy = LocalStore(root / "out")
    moved = tmp_path / "moved"
    moved.mkdir()
    scenes = sorted((committed / "src").glob("scene-*.jpg"))
    for p in scenes:
        p.rename(moved / p.name)  # the source changed since the run (the manifest still names it)
    try:
        assert main(["report", "rep", "--output", str(out_copy.root)]) == 0
    finally:
        for p in scenes:
            (moved / p.name).rename(p)
    assert capsys.readouterr().out.strip() == report.as_uri()
    after = report.read_text()
    assert after != before and "source unreadable now" in after and "Errored objects (2)" in after
    assert main(["report", "nope", "--output", str(out_copy.root)]) == 2
    assert "no run nope under" in capsys.readouterr().err
