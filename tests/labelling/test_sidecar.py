import io
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from schemas.errors import PromptTableError
from workers.labelling.sidecar import parse_prompt_table


def _jsonl(rows) -> bytes:
    return "\n".join(json.dumps(r) for r in rows).encode()


def test_parquet_and_jsonl_give_the_same_prompts():
    rows = [
        {"key": "a.jpg", "prompt_id": "p", "points": [[1.0, 2.0], [3.0, 4.0]], "point_labels": [1, 0], "box": None},
        {"key": "a.jpg", "prompt_id": "b", "points": None, "point_labels": None, "box": [0.0, 0.0, 5.0, 6.0]},
        {"key": "b/c.png", "prompt_id": None, "points": [[9.0, 9.0]], "point_labels": None, "box": None},
    ]
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), buf)
    for got in (parse_prompt_table(_jsonl(rows), "p.jsonl"), parse_prompt_table(buf.getvalue(), "p.parquet")):
        assert sorted(got) == ["a.jpg", "b/c.png"]
        p, b = got["a.jpg"]
        assert p.kind == "points" and p.prompt_id == "p"
        np.testing.assert_array_equal(p.points_xy, [[1, 2], [3, 4]])
        np.testing.assert_array_equal(p.point_labels, [1, 0])
        assert b.kind == "box" and b.box_xyxy.tolist() == [0, 0, 5, 6]
        (c,) = got["b/c.png"]
        assert c.prompt_id == "2" and c.point_labels.tolist() == [1]  # defaults: row number, foreground


@pytest.mark.parametrize(
    "row, match",
    [
        ({"key": "", "box": [0, 0, 1, 1]}, r"row 0: 'key' must be"),
        ({"key": "a", "box": [0, 0, 1, 1], "points": [[1, 1]]}, "exactly one"),
        ({"key": "a"}, "exactly one"),
        ({"key": "a", "box": [5, 0, 1, 1]}, "x1 > x0"),
        ({"key": "a", "box": [0, 0, 1]}, r"\[x0, y0, x1, y1\]"),
        ({"key": "a", "points": []}, "non-empty list"),
        ({"key": "a", "points": [[1, 2, 3]]}, r"\[x, y\] pairs"),
        ({"key": "a", "points": [[1, 2]], "point_labels": [2]}, "one 0 or 1 per point"),
        ({"key": "a", "points": [[1, 2]], "point_labels": [1, 1]}, "one 0 or 1 per point"),
    ],
)
def test_bad_rows_are_named(row, match):
    with pytest.raises(PromptTableError, match=match):
        parse_prompt_table(_jsonl([row]), "s3://b/prompts.jsonl")


def test_repeated_ids_and_unreadable_tables():
    rows = [{"key": "a", "prompt_id": "1", "box": [0, 0, 1, 1]}] * 2
    with pytest.raises(PromptTableError, match="row 1: prompt_id '1' repeats"):
        parse_prompt_table(_jsonl(rows), "p.jsonl")
    with pytest.raises(PromptTableError, match=r"p\.parquet cannot be read"):
        parse_prompt_table(b"not parquet", "p.parquet")
    with pytest.raises(PromptTableError, match="no 'key' column"):
        parse_prompt_table(_jsonl([{"k": 1}]), "p.jsonl")


def test_load_prompt_table_names_a_missing_table(tmp_path):
    from schemas import parse_job
    from workers.labelling.sidecar import load_prompt_table

    job = parse_job(
        {"source": {"uri": str(tmp_path)}, "output": str(tmp_path / "o"), "prompt_table": str(tmp_path / "p.jsonl")},
        environ={},
    )
    with pytest.raises(PromptTableError, match=r"p\.jsonl cannot be read.*check prompt_table"):
        load_prompt_table(job)
    (tmp_path / "p.jsonl").write_text('{"key": "a.jpg", "box": [0, 0, 4, 4]}\n')
    assert list(load_prompt_table(job)) == ["a.jpg"]
