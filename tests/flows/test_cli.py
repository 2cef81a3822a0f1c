import json

import numpy as np
import pycocotools.mask as mask_utils
from PIL import Image

from fastsam_core import TINY_CHECKPOINT, FastSAMModel, Segmenter
from fastsam_core.testing.synthetic import make_scene
from flows.cli import main


def test_segment_writes_decodable_rows_with_labels(tmp_path, capsys):
    img, _ = make_scene(np.random.default_rng(3), 160, 200, n_shapes=(3, 5))
    good = tmp_path / "scene one.png"
    Image.fromarray(img).save(good)
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"this is text, not a JPEG")
    out = tmp_path / "masks.jsonl"
    code = main(["segment", str(good), str(bad), "--prompt", "red", "--prompt", "blue", "--out", str(out)])
    assert code == 1  # one file failed; the other was still labelled
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    direct = Segmenter(FastSAMModel.load(TINY_CHECKPOINT, device="cpu"))([img])[0]
    assert len(rows) == len(direct) > 0
    for row, r in zip(rows, direct.rles, strict=True):
        assert row["image"] == str(good)
        rle = {"size": row["rle_size"], "counts": row["rle_counts"].encode()}  # a masks-table row
        assert np.array_equal(mask_utils.decode(rle), mask_utils.decode(r))
        assert len(row["clip_cosine"]) == 2 and len(row["clip_prob"]) == 2
        assert row["label"] in (None, "red", "blue") and (row["label"] is None) == (row["label_score"] is None)


def test_segment_reports_bad_input_by_name(tmp_path, capsys):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"")
    assert main(["segment", str(bad), "--out", str(tmp_path / "o.jsonl")]) == 1
    err = capsys.readouterr().err
    assert "decode_error" in err and "broken.jpg" in err and "empty" in err


def test_bad_settings_exit_2_with_the_reason(tmp_path, capsys):
    img = tmp_path / "a.png"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(img)
    assert main(["segment", str(img), "--conf", "0"]) == 2
    assert "conf must be in (0, 1]" in capsys.readouterr().err
