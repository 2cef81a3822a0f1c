"""Labels over time through the CLI: incremental runs follow the model and the prompts, reprompt, the Delta tables."""

import re
from pathlib import Path

import polars as pl
import pyarrow.dataset as ds
import pytest
import yaml

from tests.support import ROOT
from tests.support.helpers import cli, flow_job, scene_bytes

README = (ROOT / "README.md").read_text()


def _job(tmp_path: Path, name: str, prompts: list[str], **model) -> Path:
    job = flow_job(str(tmp_path / "src"), str(tmp_path / "out"), prompts=prompts,
                   clip={"arch": "color-words", "keep_embeddings": True}, model=model,
                   compute={"shard_size": 2, "num_actors": 1, "cpus_per_actor": 1})  # fmt: skip
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


def _masks(tmp_path: Path, run_id: str):
    return ds.dataset(str(tmp_path / f"out/runs/{run_id}/masks"), format="parquet").to_table()


@pytest.fixture(scope="module")
def nights(tmp_path_factory):
    """Six CLI runs and a reprompt over one source; (tmp_path, {step: (exit code, summary, stdout)})."""
    tmp_path = tmp_path_factory.mktemp("nights")
    (tmp_path / "src").mkdir()
    for i in range(4):
        (tmp_path / "src" / f"{i}.jpg").write_bytes(scene_bytes(700 + i, 240, 320))
    base, upgraded = _job(tmp_path, "base", ["red"]), _job(tmp_path, "conf", ["red"], conf=0.3)
    prompted = _job(tmp_path, "prompted", ["red", "blue"], conf=0.3)
    reprompted = _job(tmp_path, "reprompted", ["green", "red"], conf=0.3)
    out = str(tmp_path / "out")
    steps = {
        "first": cli("run", base, "--run-id", "n1"),
        "same": cli("run", base, "--run-id", "n2", "--incremental"),
        "model": cli("run", upgraded, "--run-id", "n3", "--incremental"),
        "source-mode": cli("run", base, "--run-id", "n4", "--incremental=source"),
        "prompt": cli("run", prompted, "--run-id", "n5", "--incremental"),
        "reprompt": cli("reprompt", "n5", "--output", out, "--prompt", "green", "--prompt", "red", "--run-id", "rp"),
        "after-reprompt": cli("run", reprompted, "--run-id", "n6", "--incremental"),
    }
    return tmp_path, steps


def test_an_unchanged_night_labels_nothing(nights):
    _, steps = nights
    code, summary, _ = steps["same"]
    assert code == 0 and summary["counts"]["objects"] == 0 and summary["counts"]["skipped"] == 4


def test_a_model_change_relabels_every_object_and_says_why(nights):
    _, steps = nights
    code, summary, out = steps["model"]
    assert code == 0
    c = summary["counts"]
    assert (c["objects"], c["labelled"], c["relabelled"], c["new"], c["changed"], c["skipped"]) == (4, 4, 4, 0, 0, 0)
    line = "run n3: incremental (labels): 0 new, 0 changed, 4 labelled under other settings (model.conf differ): "
    assert line + "relabelling; 0 unchanged skipped" in out
    # --incremental=source keeps the old rule: the bytes are unchanged, so nothing is labelled
    assert steps["source-mode"][1]["counts"]["objects"] == 0


def test_a_prompt_change_gives_every_object_the_new_prompts_scores(nights):
    tmp_path, steps = nights
    code, summary, out = steps["prompt"]
    assert code == 0 and summary["counts"]["relabelled"] == 4
    # the objects were labelled by n1 (another conf) and n3 (other prompts): both differences are named
    assert "4 labelled under other settings (model.conf, prompts differ): relabelling" in out
    masks = _masks(tmp_path, "n5").to_pylist()
    scored = [m for m in masks if m["clip_cosine"] is not None]
    assert len(scored) > 4 and all(len(m["clip_cosine"]) == 2 for m in scored)
    assert {m["image_id"] for m in masks} == set(
        ds.dataset(str(tmp_path / "out/runs/n5/images"), format="parquet").to_table()["image_id"].to_pylist()
    )


def test_reprompt_reads_no_image_and_the_next_night_skips_what_it_covered(nights):
    tmp_path, steps = nights
    code, summary, _ = steps["reprompt"]
    assert code == 0 and summary["state"] == "committed" and summary["counts"]["labelled"] == 4
    assert summary["stage_seconds"].keys() == {"score", "write"}  # no read, decode or segment stage
    parent, child = _masks(tmp_path, "n5"), _masks(tmp_path, "rp")
    assert child.select(["image_id", "mask_id", "rle_counts"]).equals(
        parent.select(["image_id", "mask_id", "rle_counts"])
    )
    assert {m["label"] for m in child.to_pylist()} - {None} <= {"green", "red"}
    code, summary, _ = steps["after-reprompt"]
    assert code == 0 and summary["counts"]["objects"] == 0 and summary["counts"]["skipped"] == 4


def test_the_readme_reads_the_current_labels_from_the_delta_tables(nights):
    tmp_path, _ = nights
    section = README[README.index("## Labels over time") :]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1).replace('"dog"', '"red"')
    scope = {"TABLES": str(tmp_path / "out/tables")}
    exec(code, scope)
    # every committed run is in the tables; the images of n2, n4, n6 (nothing labelled) add no rows
    assert sorted(scope["images"]["run_id"].unique().to_list()) == ["n1", "n3", "n5", "rp"]
    # current: per image, the latest run of each labelling fingerprint; today's is the reprompt's (n6 skipped all)
    latest = scope["latest"]
    assert latest.height == 4 * 4  # 4 images x 4 fingerprints: n1, n3 (conf), n5 (prompts), rp (new prompts)
    today = scope["today"]
    assert set(latest.filter(pl.col("labelling") == today)["run_id"].to_list()) == {"rp"}
    dogs = scope["dogs"]
    want = _masks(tmp_path, "rp").to_pylist()
    assert sorted(dogs["mask_id"].to_list()) == sorted(m["mask_id"] for m in want if m["label"] == "red")
    assert set(scope["first_night"]["run_id"].to_list()) == {"n1"}
    assert scope["per_label"]["n"].sum() == scope["masks"].filter(pl.col("label").is_not_null()).height
