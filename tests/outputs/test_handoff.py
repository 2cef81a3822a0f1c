"""The hand-off, proven in the tools it is for: Label Studio (a real server), ultralytics (training),
Datumaro (what CVAT imports with) and FiftyOne, each on the exports of a real run.

Each step is the README's ("Exports for review and training tools"), run as written, with this
test's run, folders and server put in for its placeholders.
"""

import io
import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest
import yaml
from PIL import Image

from flows.cli import main
from tests.support import ROOT
from tests.support.helpers import dense_mask, run_rows, scene_bytes
from tests.support.servers import label_studio
from tests.support.synthetic_run import make_run
from tests.support.tools import CHROMIUM_ARGS, chromium, tool
from workers.storage import LocalStore

README = (ROOT / "README.md").read_text()
PROMPTS = ["red", "green", "blue"]
GREY_PROMPTS = ("blue", "red", "green")


def _readme_block(heading: str, lang: str = "bash") -> str:
    section = README[README.index(heading) :]
    return re.search(rf"```{lang}\n(.*?)```", section, re.S).group(1)


def _commands(heading: str, **values: str) -> list[list[str]]:
    """The README's commands under `heading`, placeholders (RUN, OUT, ...) replaced, as argument lists."""
    out = []
    for line in _readme_block(heading).splitlines():
        line = line.split(" #", 1)[0].strip()
        if not line or line.startswith(("#", "export ")):
            continue
        out.append([_fill(word, values) for word in shlex.split(line)])
    return out


def _fill(word: str, values: dict[str, str]) -> str:
    for k, v in values.items():
        word = re.sub(rf"\b{k}\b", lambda _, v=v: v, word)
    return word


@pytest.fixture(scope="module")
def real_run(tmp_path_factory):
    """A run of the pipeline (the CLI: Prefect, Ray, the shipped model) on a local folder of scenes.

    The folder is under `root`, which the Label Studio server serves local files from.
    """
    root = tmp_path_factory.mktemp("handoff")
    src = root / "data/scenes"
    (src / "cam 1").mkdir(parents=True)
    for i, seed in enumerate((707, 711, 712, 713, 716, 718)):  # scenes with masks of every label, and unlabelled
        (src / ("cam 1" if i % 2 else "") / f"scene-{i}.jpg").write_bytes(scene_bytes(seed, 240, 320))
    (src / "broken.jpg").write_bytes(b"not a jpeg")
    job = root / "job.yaml"
    job.write_text(
        yaml.safe_dump(
            {
                "source": {"uri": str(src)},
                "output": str(root / "out"),
                "prompts": PROMPTS,
                "clip": {"arch": "color-words"},
                "compute": {"shard_size": 2, "num_actors": 1, "cpus_per_actor": 1},
            }
        )
    )
    assert main(["run", str(job), "--run-id", "handoff"]) == 0
    out = LocalStore(root / "out")
    images, masks = run_rows(out, "handoff")
    assert sum(r["status"] == "ok" for r in images) == 6 and len(masks) > 20
    assert {m["label"] for m in masks} >= {"red", "green", "blue", None}
    return root, out, images, masks


@pytest.fixture(scope="module")
def studio(real_run, tmp_path_factory):
    root = real_run[0]
    executable = tool("label-studio", "label-studio")
    data = tmp_path_factory.mktemp("label-studio") / "data"
    data.mkdir()
    with label_studio(executable, data, root / "data") as server:
        yield server


def _api(server: dict, path: str, **params):
    r = httpx.get(f"{server['url']}{path}", params=params, headers={"Authorization": f"Token {server['token']}"})
    r.raise_for_status()
    return r.json()


def test_label_studio_imports_a_real_run_and_serves_its_images(real_run, studio, tmp_path, monkeypatch, capsys):
    brush = pytest.importorskip("label_studio_converter.brush", reason="pip install label-studio-converter")
    root, out, images, masks = real_run
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", studio["token"])
    dest = tmp_path / "ls"
    (command,) = _commands(
        "### Label Studio",
        RUN="handoff",
        OUT=out.uri,
        URL=studio["url"],
        DOCROOT=str(root / "data"),
        DEST=str(dest),
    )
    assert command[:2] == ["fastsam-label", "export"]
    capsys.readouterr()
    assert main(command[1:]) == 0
    summary = json.loads(capsys.readouterr().out)
    project = summary["label_studio"]["project_id"]
    ok = [r for r in images if r["status"] == "ok"]
    assert summary["label_studio"] == {
        "url": f"{studio['url']}/projects/{project}",
        "project_id": project,
        "tasks": len(ok),
        "predictions": len(ok),
    }
    assert studio["token"] not in json.dumps(summary) and not list(dest.rglob("*token*"))
    # Read every task and prediction back from the server and hold them against the Parquet masks.
    tasks = {t["id"]: t for t in _api(studio, "/api/tasks", project=project, page_size=1000)["tasks"]}
    predictions = _api(studio, "/api/predictions", project=project)
    assert sorted(t["data"]["key"] for t in tasks.values()) == sorted(r["key"] for r in ok)
    assert len(predictions) == len(ok)
    by_key = {r["key"]: r for r in ok}
    decoded = 0
    for p in predictions:
        img = by_key[tasks[p["task"]]["data"]["key"]]
        mine = {m["mask_id"]: m for m in masks if m["image_id"] == img["image_id"]}
        assert p["model_version"].startswith("handoff fastsam:") and len(p["result"]) == len(mine)
        for r in p["result"]:
            m = mine[int(r["id"][1:-1])]
            assert r["value"]["brushlabels"] == [m["label"] or "unlabelled"]
            assert r["score"] == pytest.approx(m["score"], abs=1e-6)
            rgba = brush.decode_rle(r["value"]["rle"]).reshape(img["height"], img["width"], 4)
            np.testing.assert_array_equal(rgba[..., 3] > 0, dense_mask(m).astype(bool))
            decoded += 1
    assert decoded == len(masks)
    # The images load through the project's local-files storage, as the labeling page loads them.
    first = next(iter(tasks.values()))["data"]["image"]
    assert first.startswith("/data/local-files/?d=scenes/")
    r = httpx.get(studio["url"] + first, headers={"Authorization": f"Token {studio['token']}"})
    assert r.status_code == 200 and Image.open(io.BytesIO(r.content)).size == (320, 240)
    # A second import under the same title is refused (exit 7), not appended.
    assert main([*command[1:-2], "--dest", str(tmp_path / "again")]) == 7
    assert "already has a project" in capsys.readouterr().err


def _grey_run(root: Path) -> LocalStore:
    """A committed run of uniform grey images whose masks carry every label: colours show on grey."""
    src = root / "data/grey"
    keys = [f"g{i}.png" for i in range(3)]
    src.mkdir(parents=True)
    for k in keys:
        Image.fromarray(np.full((120, 160, 3), 128, np.uint8)).save(src / k)
    out = LocalStore(root / "grey-out")
    # In an order where a colour by position (the old palette: red, green, blue, ...) is the wrong one.
    make_run(out, "grey", n_images=0, masks_per_image=8, prompts=GREY_PROMPTS, source=str(src), keys=keys)
    return out


def test_label_studio_draws_each_label_in_its_configured_colour(real_run, studio, tmp_path, monkeypatch):
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    executable = chromium()
    root = real_run[0]
    out = _grey_run(root)
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", studio["token"])
    args = ["export", "grey", "--output", out.uri, "--to", "label-studio", "--dest", str(tmp_path / "ls"),
            "--label-studio-url", studio["url"], "--project", "grey colours",
            "--image-root", str(root / "data")]  # fmt: skip
    assert main(args) == 0
    config = (tmp_path / "ls/labeling-config.xml").read_text()
    colours = dict(re.findall(r'<Label value="([^"]+)" background="#([0-9a-f]{6})"/>', config))
    assert colours == {"blue": "0000ff", "red": "ff0000", "green": "008000", "unlabelled": "9e9e9e"}
    images, masks = run_rows(out, "grey")
    img = next(r for r in images if r["status"] == "ok" and len({m["label"] for m in masks if m["image_id"] ==
                                                                  r["image_id"]} & set(GREY_PROMPTS)) == 3)  # fmt: skip
    project = next(p["id"] for p in _api(studio, "/api/projects")["results"] if p["title"] == "grey colours")
    task = next(t for t in _api(studio, "/api/tasks", project=project)["tasks"] if t["data"]["key"] == img["key"])
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.goto(f"{studio['url']}/user/login")
        page.fill("input[name=email]", studio["email"])
        page.fill("input[name=password]", studio["password"])
        page.click("button[type=submit]")
        page.wait_for_load_state("networkidle")
        page.goto(f"{studio['url']}/projects/{project}/data?task={task['id']}")
        shown = page.wait_for_selector("img[src^='blob:']", state="attached", timeout=60_000)
        page.wait_for_timeout(3000)  # the regions are drawn on canvases after the image
        box = shown.bounding_box()
        page.screenshot(path=str(tmp_path / "task.png"))
        browser.close()
    shot = np.asarray(Image.open(tmp_path / "task.png").convert("RGB")).astype(float)
    mine = [m for m in masks if m["image_id"] == img["image_id"]]
    dense = np.stack([dense_mask(m).astype(bool) for m in mine])
    alone = dense & (dense.sum(axis=0) == 1)  # pixels of one mask only
    sx, sy = box["width"] / img["width"], box["height"] / img["height"]
    for label in GREY_PROMPTS:
        layer = np.zeros((img["height"], img["width"]), np.uint8)
        for m, only in zip(mine, alone, strict=True):
            if m["label"] == label:
                layer |= only
        inner = cv2.erode(layer, np.ones((3, 3), np.uint8)).astype(bool)  # away from anti-aliased edges
        ys, xs = np.nonzero(inner)
        px = np.clip((box["x"] + (xs + 0.5) * sx).astype(int), 0, shot.shape[1] - 1)
        py = np.clip((box["y"] + (ys + 0.5) * sy).astype(int), 0, shot.shape[0] - 1)
        drawn = shot[py, px].mean(axis=0) - 128.0  # what the region adds to the grey image
        want = np.array([int(colours[label][i : i + 2], 16) for i in (0, 2, 4)], float) - 128.0
        cosine = drawn @ want / (np.linalg.norm(drawn) * np.linalg.norm(want))
        assert len(xs) > 30 and cosine > 0.95, (label, drawn, want, cosine)


def test_the_yolo_export_trains_with_ultralytics_and_sees_every_image_and_segment(real_run, tmp_path):
    _, out, images, masks = real_run
    dataset = tmp_path / "dataset"
    export, train = _commands("### YOLO (ultralytics)", RUN="handoff", OUT=out.uri, DATASET=str(dataset))
    assert main(export[1:]) == 0
    tiny = tmp_path / "tiny-seg.pt"  # the shipped small model (named without "fastsam", which the CLI reads as FastSAM)
    shutil.copyfile(ROOT / "fastsam_core/weights/fastsam-tiny.pt", tiny)
    assert train[:3] == ["yolo", "segment", "train"]
    train = [str(Path(sys.executable).parent / "yolo"), *train[1:]]
    train = [f"model={tiny}" if a.startswith("model=") else a for a in train]
    quick = ["epochs=1", "imgsz=320", "batch=4", "device=cpu", "workers=0", "plots=False", "val=False",
             f"project={tmp_path / 'runs'}", "name=t", "exist_ok=True"]  # fmt: skip
    done = subprocess.run([*train, *quick], capture_output=True, text=True, timeout=900, env={"YOLO_OFFLINE": "1",
                          "PATH": str(Path(sys.executable).parent), "HOME": str(tmp_path)})  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert (tmp_path / "runs/t/weights/last.pt").exists()
    from ultralytics.data.utils import load_dataset_cache_file

    (cache_file,) = dataset.rglob("*.cache")  # beside the folder of the first label file
    cache = load_dataset_cache_file(cache_file)
    found, missing, empty, corrupt, total = cache["results"]
    ok = [r for r in images if r["status"] == "ok"]
    assert (found + empty, missing, corrupt, total) == (len(ok), 0, 0, len(ok))
    assert sum(len(label["segments"]) for label in cache["labels"]) == len([m for m in masks if m["area"] > 0])
    names = yaml.safe_load((dataset / "data.yaml").read_text())["names"]
    assert list(names.values()) == [*PROMPTS, "unlabelled"]


def test_the_cvat_layout_is_what_datumaro_detects_as_coco_instances(real_run, tmp_path):
    _, out, images, masks = real_run
    dest = tmp_path / "cvat-export"
    export, detect = _commands("### CVAT and Datumaro", RUN="handoff", OUT=out.uri, DEST=str(dest))
    assert main(export[1:]) == 0
    datum = tool("datumaro", "datum")
    assert detect[:2] == ["datum", "detect"]
    found = subprocess.run([str(datum), *detect[1:]], capture_output=True, text=True, timeout=300)
    assert found.returncode == 0 and "Detected format: coco_instances" in found.stdout + found.stderr, found
    count = (
        "import json, sys\nfrom datumaro.components.annotation import AnnotationType\n"
        "from datumaro.components.dataset import Dataset\n"
        "ds = Dataset.import_from(sys.argv[1], 'coco_instances')\n"
        "anns = [a for item in ds for a in item.annotations if a.type.name == 'mask']\n"
        "print(json.dumps({'images': sorted(str(item.media.path).split('/images/default/')[1] for item in ds),"
        " 'masks': len(anns), 'labels': [c.name for c in ds.categories()[AnnotationType.label]]}))\n"
    )
    python = tool("datumaro", "python")
    done = subprocess.run([str(python), "-c", count, str(dest)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    ok = sorted(r["key"] for r in images if r["status"] == "ok")
    assert got == {"images": ok, "masks": len(masks), "labels": [*PROMPTS, "unlabelled"]}


def test_fiftyone_loads_the_coco_export(real_run, tmp_path):
    root, out, images, masks = real_run
    dest = tmp_path / "coco"
    assert main(["export", "handoff", "--output", out.uri, "--to", "coco", "--dest", str(dest)]) == 0
    snippet = _readme_block("### FiftyOne", "python")
    script = (
        "import json, sys\nSOURCE, DEST = sys.argv[1], sys.argv[2]\n" + snippet + "\nprint(json.dumps({"
        "'samples': len(dataset), 'masks': dataset.count('segmentations.detections'),"
        "'labels': sorted(dataset.distinct('segmentations.detections.label')),"
        "'files': sorted(s.filepath for s in dataset)}))\n"
    )
    python = tool("fiftyone", "python")
    env = {"FIFTYONE_DATABASE_DIR": str(tmp_path / "db"), "FIFTYONE_DO_NOT_TRACK": "true", "HOME": str(tmp_path)}
    done = subprocess.run([str(python), "-c", script, str(root / "data/scenes"), str(dest)], capture_output=True,
                          text=True, timeout=600, env=env)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    ok = [r for r in images if r["status"] == "ok"]
    assert got == {
        "samples": len(ok),
        "masks": len(masks),
        "labels": sorted({m["label"] or "unlabelled" for m in masks}),
        "files": sorted(str(root / "data/scenes" / r["key"]) for r in ok),
    }
