"""Exports of committed runs, checked with the tools' own readers: pycocotools, label-studio-converter, OpenCV."""

import json
import re
import xml.etree.ElementTree as ET

import boto3
import cv2
import numpy as np
import pytest
import yaml
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from flows.cli import main
from tests.support.faults import FaultProxy
from tests.support.helpers import dense_mask, flow_job, run_rows, scene_bytes
from tests.support.synthetic_run import make_run
from workers.outputs.export import ExportOptions
from workers.outputs.export.labelstudio import image_url
from workers.storage import LocalStore

brush = pytest.importorskip("label_studio_converter.brush", reason="pip install label-studio-converter")


@pytest.fixture(scope="module")
def pipeline_run(s3_endpoint, prefect_harness):
    """A run made by the flow from loopback S3 into loopback S3: scenes, a grey image, a broken file."""
    from flows.label import label_collection

    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    s3.create_bucket(Bucket="export-run")
    for i in range(6):
        s3.put_object(Bucket="export-run", Key=f"in/cam/{i}.jpg", Body=scene_bytes(500 + i))
    s3.put_object(
        Bucket="export-run",
        Key="in/grey.png",
        Body=cv2.imencode(".png", np.full((40, 50, 3), 128, np.uint8))[1].tobytes(),
    )
    s3.put_object(Bucket="export-run", Key="in/broken.jpg", Body=b"not a jpeg")
    job = flow_job(
        "s3://export-run/in",
        "s3://export-run/out",
        prompts=["red", "blue", "green"],
        selection={"threshold": 0.3},
        storage={"endpoint_url": s3_endpoint},
    )
    summary = label_collection(job=job, run_id="exp")
    assert summary["state"] == "committed" and summary["errors_by_kind"] == {"unsupported": 1}
    from schemas.job import StorageSpec
    from workers.storage import S3Store

    return S3Store("s3://export-run/out", StorageSpec(endpoint_url=s3_endpoint)), s3_endpoint


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    out = LocalStore(tmp_path_factory.mktemp("synthetic") / "out")
    make_run(out, "syn", n_images=40, masks_per_image=6, shard_size=16)
    return out


def _export(store, run_id, to, dest, *flags, endpoint=None) -> int:
    args = ["export", run_id, "--output", store.uri, "--to", to, "--dest", dest, *flags]
    return main([*args, "--endpoint-url", endpoint] if endpoint else args)


def test_coco_round_trip_on_a_pipeline_run(pipeline_run, tmp_path, capsys):
    store, endpoint = pipeline_run
    assert _export(store, "exp", "coco", "s3://export-run/exports/coco", endpoint=endpoint) == 0
    path = tmp_path / "annotations.json"
    s3 = boto3.client("s3", endpoint_url=endpoint)
    path.write_bytes(s3.get_object(Bucket="export-run", Key="exports/coco/annotations.json")["Body"].read())
    coco = COCO(str(path))
    images, masks = run_rows(store, "exp")
    ok = [r for r in images if r["status"] == "ok"]
    assert [i["file_name"] for i in coco.dataset["images"]] == [r["key"] for r in ok]  # errored left out
    assert "grey.png" in {r["key"] for r in ok} and "broken.jpg" not in {i["file_name"] for i in coco.dataset["images"]}
    anns = coco.dataset["annotations"]
    assert len(anns) == len(masks) > 10
    for ann, m in zip(anns, masks, strict=True):  # every annotation is exactly the Parquet mask
        np.testing.assert_array_equal(coco.annToMask(ann), dense_mask(m))
        assert coco.cats[ann["category_id"]]["name"] == (m["label"] or "unlabelled")
        assert ann["area"] == m["area"] and ann["bbox"] == pytest.approx(m["bbox"])
    assert [c["name"] for c in coco.dataset["categories"]] == ["red", "blue", "green", "unlabelled"]
    dt = coco.loadRes([{k: a[k] for k in ("image_id", "category_id", "segmentation", "score")} for a in anns])
    evaluation = COCOeval(coco, dt, "segm")
    evaluation.params.maxDets = [1, 10, 100]  # every image here has fewer than 100 masks
    evaluation.evaluate()
    evaluation.accumulate()
    evaluation.summarize()
    assert evaluation.stats[0] == pytest.approx(1.0)  # the export evaluated against itself


def test_coco_filters_and_awkward_rows(synthetic, tmp_path):
    dest = tmp_path / "coco"
    flags = ["--min-score", "0.6", "--min-area", "1", "--labelled-only", "--limit", "12"]
    assert _export(synthetic, "syn", "coco", str(dest), *flags) == 0
    coco = COCO(str(dest / "annotations.json"))
    images, masks = run_rows(synthetic, "syn")
    first = [r["image_id"] for r in images if r["status"] == "ok"][:12]
    expected = [m for m in masks if m["image_id"] in first and m["score"] >= 0.6 and m["area"] >= 1 and m["label"]]
    assert len(coco.dataset["images"]) == 12 and len(coco.dataset["annotations"]) == len(expected) > 0
    for ann, m in zip(coco.dataset["annotations"], expected, strict=True):
        np.testing.assert_array_equal(coco.annToMask(ann), dense_mask(m))
    assert [c["name"] for c in coco.dataset["categories"]] == ["red", "blue", "green"]
    # Without filters: the zero-area mask, unlabelled masks and images without masks export too.
    assert _export(synthetic, "syn", "coco", str(tmp_path / "all")) == 0
    everything = json.loads((tmp_path / "all/annotations.json").read_text())
    assert len(everything["annotations"]) == len(masks) and min(a["area"] for a in everything["annotations"]) == 0
    assert len(everything["images"]) == sum(r["status"] == "ok" for r in images)


@pytest.mark.parametrize("shape", ["brush", "polygon", "both"])
def test_label_studio_masks_decode_to_the_parquet_masks(synthetic, tmp_path, shape):
    dest = tmp_path / "ls"
    assert _export(synthetic, "syn", "label-studio", str(dest), "--ls-shape", shape, "--limit", "10") == 0
    tasks = json.loads((dest / "tasks.json").read_text())
    config = ET.parse(dest / "labeling-config.xml").getroot()
    controls = {c.get("name"): c for c in config if c.tag in ("BrushLabels", "PolygonLabels")}
    assert set(controls) == {"brush": {"brush"}, "polygon": {"polygon"}, "both": {"brush", "polygon"}}[shape]
    config_labels = {c.get("name"): {label.get("value") for label in c} for c in controls.values()}
    images, masks = run_rows(synthetic, "syn")
    ok = [r for r in images if r["status"] == "ok"][:10]
    assert [t["data"]["key"] for t in tasks] == [r["key"] for r in ok]
    checked = 0
    for task, img in zip(tasks, ok, strict=True):
        assert task["data"]["image"] == img["uri"]  # an S3 source: Label Studio's cloud storage resolves it
        prediction = task["predictions"][0]
        assert prediction["model_version"] == "syn fastsam:" + "ab" * 6
        mine = {m["mask_id"]: m for m in masks if m["image_id"] == img["image_id"]}
        for r in prediction["result"]:
            m = mine[int(r["id"][1:-1])]
            labels = r["value"][r["type"]]
            assert labels == [m["label"] or "unlabelled"] and labels[0] in config_labels[r["from_name"]]
            if r["type"] == "brushlabels":
                decoded = brush.decode_rle(r["value"]["rle"]).reshape(img["height"], img["width"], 4)
                np.testing.assert_array_equal(decoded[..., 0] > 0, dense_mask(m).astype(bool))
                checked += 1
            else:
                points = np.array(r["value"]["points"])
                assert points.min() >= 0 and points.max() <= 100 and len(points) >= 3
    assert checked > 0 if shape != "polygon" else checked == 0


def test_label_studio_image_urls():
    opts = ExportOptions("label-studio", "/x")
    assert image_url("s3://b/k/a.jpg", "k/a.jpg", "s3://b", opts) == "s3://b/k/a.jpg"
    local = "file:///data/photos/cam%201/a.jpg"
    assert image_url(local, "cam 1/a.jpg", "/data/photos", opts) == "/data/local-files/?d=cam%201/a.jpg"
    rooted = ExportOptions("label-studio", "/x", image_root="/data")
    assert image_url(local, "cam 1/a.jpg", "/data/photos", rooted) == "/data/local-files/?d=photos/cam%201/a.jpg"
    templated = ExportOptions("label-studio", "/x", image_url_template="https://cdn.example/{key}")
    assert image_url(local, "cam 1/a.jpg", "/data/photos", templated) == "https://cdn.example/cam 1/a.jpg"


def test_yolo_labels_parse_and_polygons_cover_their_masks(synthetic, tmp_path):
    dest = tmp_path / "yolo"
    assert _export(synthetic, "syn", "yolo", str(dest), "--images", "none") == 0
    data = yaml.safe_load((dest / "data.yaml").read_text())
    names = data["names"]
    assert list(names.values()) == ["red", "blue", "green", "unlabelled"] and data["nc"] == 4
    assert (data["train"], data["val"], "path" in data) == ("images", "images", False)
    images, masks = run_rows(synthetic, "syn")
    ok = [r for r in images if r["status"] == "ok"]
    assert not (dest / "images").exists()  # --images none: labels only
    checked = 0
    for img in ok:
        lines = (dest / "labels" / img["key"]).with_suffix(".txt").read_text().splitlines()
        mine = [m for m in masks if m["image_id"] == img["image_id"] and m["area"] > 0]
        assert len(lines) == len(mine)  # the zero-area mask has no polygon
        for line, m in zip(lines, mine, strict=True):
            cls, *xy = line.split()
            assert names[int(cls)] == (m["label"] or "unlabelled")
            points = np.array(xy, float).reshape(-1, 2)
            assert ((points >= 0) & (points <= 1)).all()
            if m["area"] >= 400:
                drawn = np.zeros((img["height"], img["width"]), np.uint8)
                cv2.fillPoly(drawn, [np.round(points * [img["width"], img["height"]]).astype(np.int32)], 1)
                dense = dense_mask(m)
                iou = (drawn & dense).sum() / (drawn | dense).sum()
                assert iou >= 0.9, (img["key"], m["mask_id"], iou)
                checked += 1
    assert checked > 50


def test_bad_exports_are_one_line_each(synthetic, tmp_path, capsys):
    from schemas import parse_job
    from tests.support.helpers import plan_for

    src = tmp_path / "src"
    src.mkdir()
    (src / "a.jpg").write_bytes(scene_bytes(1))
    half = LocalStore(tmp_path / "half")  # planned, never labelled
    plan_for(parse_job({"source": {"uri": str(src)}, "output": str(tmp_path / "half")}, environ={}), "half")
    dest = tmp_path / "dest"
    assert _export(synthetic, "syn", "coco", str(dest)) == 0
    (tmp_path / "file.txt").write_text("a file, not a folder")
    capsys.readouterr()
    cases = [
        ("unknown run", (synthetic, "nope", str(tmp_path / "d1")), 2,
         r"no run nope under .*check the run id and --output"),
        ("uncommitted", (half, "half", str(tmp_path / "d2")), 6,
         r"run half is not committed \(0 of 1 shards done\); finish it with `fastsam-label run JOB --run-id half`"),
        ("not empty", (synthetic, "syn", str(dest)), 7,
         r"destination .*/dest is not empty \(it holds annotations\.json\); .*--force"),
        ("unwritable", (synthetic, "syn", str(tmp_path / "file.txt/sub")), 4,
         r"destination is not writable: cannot write .*file\.txt/sub"),
    ]  # fmt: skip
    for case, (store, run_id, where), code, message in cases:
        assert _export(store, run_id, "coco", where) == code, case
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and re.search(message, lines[0]), (case, lines)
    assert _export(synthetic, "syn", "coco", str(tmp_path / "d3"), "--min-score", "2") == 3
    line = capsys.readouterr().err.strip()
    assert line == "error: no mask of run syn passes the filters (--min-score 2.0); loosen them"
    assert list((tmp_path / "d3").iterdir()) == []  # nothing written (the write probe is gone too)
    assert _export(synthetic, "syn", "coco", str(dest), "--force") == 0


def test_an_s3_destination_that_refuses_writes(synthetic, s3_endpoint, capsys):
    with FaultProxy(s3_endpoint, deny="AccessDenied") as proxy:
        code = _export(synthetic, "syn", "coco", "s3://anywhere/exports", endpoint=proxy.url)
    assert code == 4
    assert "AccessDenied" in capsys.readouterr().err


def test_the_export_flow_writes_what_the_cli_writes(synthetic, tmp_path, prefect_harness):
    from flows.export import export_run

    summary = export_run(
        run_id="syn",
        output=synthetic.uri,
        to="yolo",
        dest=str(tmp_path / "flow"),
        filters={"labelled_only": True},
        images="none",
    )
    assert _export(synthetic, "syn", "yolo", str(tmp_path / "cli"), "--labelled-only", "--images", "none") == 0
    flow_files = sorted(p.relative_to(tmp_path / "flow") for p in (tmp_path / "flow").rglob("*") if p.is_file())
    cli_files = sorted(p.relative_to(tmp_path / "cli") for p in (tmp_path / "cli").rglob("*") if p.is_file())
    assert flow_files == cli_files and len(flow_files) == summary["images"] + 2  # labels, data.yaml, the manifest
    for rel in flow_files:
        if rel.name != "fastsam-export-yolo.json":  # the same but for the time it was written
            assert (tmp_path / "flow" / rel).read_bytes() == (tmp_path / "cli" / rel).read_bytes()
    assert yaml.safe_load((tmp_path / "flow/data.yaml").read_text())["names"] == {0: "red", 1: "blue", 2: "green"}
