"""Exports of hostile or awkward buckets: keys are data, never paths; --force touches only its own files."""

import json
import os
import re
from pathlib import Path

import pytest
import yaml

from flows.cli import main
from schemas.errors import ExportOptionsError, UnsafeKeyError
from tests.support.synthetic_run import make_run
from workers.outputs.export.base import ExportOptions, unlabelled_name
from workers.outputs.export.labelstudio import PALETTE, UNLABELLED_COLOUR, image_url, label_colours
from workers.outputs.export.paths import PathClaims
from workers.storage import LocalStore
from workers.storage.keys import relative_path

LONG = "n" * 300 + ".jpg"
HOSTILE = [
    "x/../../../../../../tmp/fastsam-pwn.jpg",  # escapes any destination
    "../e.jpg",  # lands outside labels/
    "a//x.jpg",
    "a/./x.jpg",
    "a/x.jpg",
    "a\\x.jpg",
    "bell\x07.jpg",
    LONG,
    "a.jpg",
    "a.png",
    "a.JPG",
    "A.jpg",
    "x.jpg",
    "x.txt/y.jpg",
    "x.jpg/z.png",
    "images/cam/p.jpg",  # ultralytics replaces the last /images/ of a path with /labels/
    "anim.gif",
]


def _files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() or p.is_symlink())


def _export(store, run_id, to, dest, *flags) -> int:
    return main(["export", run_id, "--output", store.uri, "--to", to, "--dest", str(dest), *flags])


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    out = LocalStore(tmp_path_factory.mktemp("hostile") / "out")
    make_run(out, "bad", n_images=0, masks_per_image=3, shard_size=8, keys=HOSTILE, prompts=("red", "object"))
    return out


@pytest.mark.parametrize(
    "key, why",
    [
        ("a/b.jpg", None),
        ("cam 1/été #2?.jpg", None),
        ("", "empty"),
        ("../e.jpg", r"a '\.\.' segment"),
        ("x/../../tmp/p.jpg", r"a '\.\.' segment"),
        ("a/./x.jpg", r"a '\.' segment"),
        ("a//x.jpg", "empty folder name"),
        ("/abs.jpg", "empty folder name"),
        ("a\\x.jpg", "backslash"),
        ("a\nb.jpg", "control characters"),
        ("nul\x00.jpg", "control characters"),
        (LONG, "longer than 200 bytes"),
        ("d/" * 600 + "a.jpg", "longer than 1024 bytes"),
    ],
)
def test_relative_path_refuses_what_is_not_a_plain_relative_path(key, why):
    if why is None:
        assert relative_path(key) == key
    else:
        with pytest.raises(UnsafeKeyError, match=why):
            relative_path(key)


def test_path_claims_compare_ignoring_case_and_see_files_in_the_way_of_folders(tmp_path):
    import sqlite3

    claims = PathClaims(sqlite3.connect(tmp_path / "c.sqlite"))
    assert claims.place([["labels/a.txt"], ["labels/a~1.txt"]], "a.jpg") == 0
    assert claims.place([["labels/A.txt"], ["labels/A~2.txt"]], "A.jpg") == 1  # one file on macOS
    assert claims.place([["labels/x.txt"]], "x.jpg") == 0
    assert claims.holder("labels/x.txt/y.txt") == "x.jpg"  # needs a folder where a file is
    assert claims.holder("labels") == "a.jpg"  # a folder already: no file there
    assert claims.holder("labels/b.txt") is None


def test_yolo_export_of_a_hostile_bucket_stays_inside_and_gives_every_image_its_own_label_file(hostile, tmp_path):
    dest = tmp_path / "deep/inside/yolo"
    assert _export(hostile, "bad", "yolo", dest, "--images", "none") == 0
    assert not Path("/tmp/fastsam-pwn.txt").exists()
    assert _files(tmp_path) == [f"deep/inside/yolo/{f}" for f in _files(dest)]  # nothing outside the destination
    manifest = json.loads((dest / "fastsam-export-yolo.json").read_text())
    refused = {r["key"]: r["why"] for r in manifest["refused"]}
    unsafe = {"x/../../../../../../tmp/fastsam-pwn.jpg", "../e.jpg", "a//x.jpg", "a/./x.jpg", "a\\x.jpg", LONG}
    # ("bell\x07.jpg" is the run's decode error: every 11th synthetic image is one.)
    assert refused == {
        **{k: refused[k] for k in unsafe},
        "anim.gif": ".gif images are not read",
        "x.jpg/z.png": "'x.jpg/z.png' needs images/x.jpg/z.png (or a folder of it), which 'x.jpg' holds (names "
        "compared ignoring case); rename one of the two objects to export both",
        "x.txt/y.jpg": "'x.txt/y.jpg' needs images/x.txt/y.jpg (or a folder of it), which 'x.jpg' holds (names "
        "compared ignoring case); rename one of the two objects to export both",
    }
    assert refused["../e.jpg"] == "it has a '..' segment" and refused["a//x.jpg"].startswith("it has an empty folder")
    assert manifest["left_out"] == {
        "errored image": 1,
        "key that cannot be a file path": 6,
        "image format ultralytics does not train on": 1,
        "file path another key holds": 2,
    }
    renamed = {r["key"]: r["path"] for r in manifest["renamed"]}
    assert set(renamed) == {"a.JPG", "a.jpg", "a.png", "images/cam/p.jpg"}
    assert renamed["images/cam/p.jpg"] == "images/_images/cam/p.jpg"
    assert re.fullmatch(r"images/a~[0-9a-f]{8}\.png", renamed["a.png"])
    labels = [f for f in _files(dest) if f.startswith("labels/")]
    expected = ["A.jpg", "a/x.jpg", "x.jpg", *(renamed[k] for k in ("a.JPG", "a.jpg", "a.png", "images/cam/p.jpg"))]
    assert labels == sorted("labels/" + str(Path(k.removeprefix("images/")).with_suffix(".txt")) for k in expected)
    assert manifest["images"] == 7 and len({f.lower() for f in labels}) == 7  # distinct on macOS too


def test_an_odd_key_never_stops_an_export_and_nothing_is_written_before_the_checks(hostile, tmp_path):
    for to in ("coco", "label-studio"):
        assert _export(hostile, "bad", to, tmp_path / to) == 0
    coco = json.loads((tmp_path / "coco/annotations.json").read_text())
    names = {i["file_name"] for i in coco["images"]}
    assert len(names) == 10 and {"x.txt/y.jpg", "x.jpg/z.png", "anim.gif"} <= names and "../e.jpg" not in names
    tasks = json.loads((tmp_path / "label-studio/tasks.json").read_text())
    assert {t["data"]["key"] for t in tasks} == names  # one rule for every format
    # A collision the export cannot rename around is left out, not fatal, in the CVAT layout as well.
    assert _export(hostile, "bad", "coco", tmp_path / "cvat", "--layout", "cvat", "--images", "none") == 0
    cvat = json.loads((tmp_path / "cvat/fastsam-export-coco.json").read_text())
    assert {r["key"] for r in cvat["refused"] if r["why"].endswith("to export both")} == {"x.jpg/z.png"}


def test_force_replaces_only_what_an_earlier_export_of_the_format_wrote(hostile, tmp_path):
    dest = tmp_path / "dataset"
    (dest / "labels/train").mkdir(parents=True)
    (dest / "labels/train/mine.txt").write_text("0 0.1 0.1 0.2 0.2 0.3 0.1\n")  # the user's own dataset
    assert _export(hostile, "bad", "yolo", dest, "--images", "none") == 7  # not empty, no --force
    assert _files(dest) == ["labels/train/mine.txt"]
    assert _export(hostile, "bad", "yolo", dest, "--images", "none", "--force") == 0
    first = _files(dest)
    assert "labels/train/mine.txt" in first and len(first) > 5
    # A smaller export replaces the earlier one's files and removes the ones it no longer has.
    assert _export(hostile, "bad", "yolo", dest, "--images", "none", "--force", "--limit", "4") == 0
    manifest = json.loads((dest / "fastsam-export-yolo.json").read_text())
    assert _files(dest) == sorted([*manifest["files"], "fastsam-export-yolo.json", "labels/train/mine.txt"])
    assert manifest["images"] == 3 and manifest["state"] == "complete"  # of the first 4, ../e.jpg is refused
    assert len(manifest["files"]) == 3 + 1 and len(first) == 7 + 3  # labels, data.yaml (+ manifest, mine.txt)


def test_force_refuses_to_overwrite_a_file_no_export_wrote(hostile, tmp_path, capsys):
    dest = tmp_path / "dataset"
    dest.mkdir()
    (dest / "data.yaml").write_text("their: own\n")
    capsys.readouterr()
    assert _export(hostile, "bad", "yolo", dest, "--images", "none", "--force") == 7
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and re.search(
        r"holds data\.yaml, which this export would overwrite and no earlier yolo", err[0]
    )
    assert _files(dest) == ["data.yaml"] and (dest / "data.yaml").read_text() == "their: own\n"
    (dest / "fastsam-export-yolo.json").write_text("{not json")
    assert _export(hostile, "bad", "yolo", dest, "--images", "none", "--force") == 2
    assert "is not a readable fastsam-label export manifest" in capsys.readouterr().err


def test_a_prompt_named_object_keeps_its_own_category_in_every_format(hostile, tmp_path):
    assert _export(hostile, "bad", "coco", tmp_path / "coco") == 0
    cats = json.loads((tmp_path / "coco/annotations.json").read_text())["categories"]
    assert [(c["id"], c["name"]) for c in cats] == [(1, "red"), (2, "object"), (3, "unlabelled")]
    assert _export(hostile, "bad", "yolo", tmp_path / "yolo", "--images", "none") == 0
    assert yaml.safe_load((tmp_path / "yolo/data.yaml").read_text())["names"] == {
        0: "red",
        1: "object",
        2: "unlabelled",
    }
    assert _export(hostile, "bad", "label-studio", tmp_path / "ls") == 0
    config = (tmp_path / "ls/labeling-config.xml").read_text()
    assert re.findall(r'<Label value="([^"]+)"', config) == ["red", "object", "unlabelled"]


def test_the_catch_all_never_takes_a_prompts_name():
    from types import SimpleNamespace

    old = SimpleNamespace(prompts=["unlabelled", "Unlabelled-2", "cat"])  # committed before jobs refused the name
    assert unlabelled_name(old) == "unlabelled-3"


def test_label_colours_follow_the_name_not_the_position():
    colours = label_colours(["green", "cat", "Blue", "dark green", "dog", "unlabelled"], "unlabelled")
    assert colours == {
        "green": "#008000",
        "cat": PALETTE[0],
        "Blue": "#0000ff",
        "dark green": "#006400",
        "dog": PALETTE[1],
        "unlabelled": UNLABELLED_COLOUR,
    }


def test_label_studio_s3_urls_keep_question_marks_and_hashes_in_the_key():
    opts = ExportOptions("label-studio", "/x")
    assert image_url("s3://b/in/a?b#c d.jpg", "a?b#c d.jpg", "s3://b/in", opts) == "s3://b/in/a%3Fb%23c%20d.jpg"


@pytest.mark.parametrize(
    "template, message",
    [
        ("{nope}", r"uses \{nope\}; the fields are \{key\}, \{uri\}, \{path\}"),
        ("{0}", r"uses \{0\}"),
        ("{key", r"does not parse"),
        ("{key.upper}", r"uses \{key\.upper\}"),
    ],
)
def test_a_bad_url_template_is_one_line(template, message):
    with pytest.raises(ExportOptionsError, match=message):
        ExportOptions("label-studio", "/x", image_url_template=template)


def test_a_bad_url_template_on_the_command_line(hostile, tmp_path, capsys):
    assert _export(hostile, "bad", "label-studio", tmp_path / "ls", "--image-url-template", "{nope}") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "the fields are {key}, {uri}, {path}" in err[0]
    assert not (tmp_path / "ls").exists()


def test_links_need_local_folders(hostile, tmp_path, capsys):
    assert _export(hostile, "bad", "yolo", tmp_path / "y", "--images", "link") == 2
    assert "--images link needs a local source" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "y")
