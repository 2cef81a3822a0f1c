"""The incremental index: (URI, ETag, labelling fingerprint) of what committed runs labelled, compacted."""

import pyarrow as pa
import pytest

from schemas import RunLayout
from schemas.errors import TableError
from schemas.tables import IMAGES_SCHEMA, INDEX_SCHEMA
from workers.runs import index
from workers.storage import LocalStore
from workers.storage.files import parquet_bytes, read_parquet


def _images(rows: list[tuple[str, str | None, str]]) -> pa.Table:
    n = len(rows)
    cols = {name: [None] * n for name in IMAGES_SCHEMA.names}
    cols.update(
        run_id=["r"] * n,
        shard_id=[0] * n,
        image_id=[f"id{i}" for i in range(n)],
        uri=[u for u, _, _ in rows],
        key=[u.rsplit("/", 1)[-1] for u, _, _ in rows],
        etag=[e for _, e, _ in rows],
        status=[s for _, _, s in rows],
        model_sha256=["0" * 64] * n,
    )
    return pa.table(cols, schema=IMAGES_SCHEMA)


def _commit(out: LocalStore, run_id: str, rows, labelling: str = "L1") -> None:
    index.add_run(out, run_id, [_images(rows)], labelling)
    out.put(RunLayout(run_id).success, b"")


def test_only_objects_labelled_for_good_with_a_known_etag_are_indexed():
    images = _images(
        [
            ("s3://b/a.jpg", "e1", "ok"),
            ("s3://b/b.jpg", "e2", "decode_error"),  # will fail again: indexed
            ("s3://b/c.jpg", "e3", "read_error"),  # may pass next time: not indexed
            ("s3://b/d.jpg", "e4", "label_error"),
            ("s3://b/e.jpg", "e5", "worker_lost"),
            ("s3://b/f.jpg", None, "ok"),  # unknown ETag: cannot be matched, so not indexed
        ]
    )
    rows = index.rows_of(images, "r", "L1")
    assert rows.to_pylist() == [
        {"uri": "s3://b/a.jpg", "etag": "e1", "run_id": "r", "labelling": "L1"},
        {"uri": "s3://b/b.jpg", "etag": "e2", "run_id": "r", "labelling": "L1"},
    ]


_SEEN = pa.table(
    {"uri": ["s3://b/a", "s3://b/b", "s3://b/c", "s3://b/m"], "etag": ["1", "2", "3", "4"],
     "run_id": ["r1", "r1", "r1", "r2"], "labelling": ["L1", "L1", "L1", "L2"]},
    schema=INDEX_SCHEMA,
)  # fmt: skip


def test_classify_by_uri_etag_and_labelling_fingerprint_and_never_a_missing_etag():
    listing = pa.table(
        {"uri": ["s3://b/a", "s3://b/b", "s3://copy/a", "s3://b/c", "s3://b/m", "s3://b/new"],
         "etag": ["1", "2x", "1", None, "4", "9"]}
    )  # fmt: skip
    U, N, C, R = index.UNCHANGED, index.NEW, index.CHANGED, index.RELABEL
    # m was labelled by L2 only: relabelled under L1; b's bytes changed; c's ETag is unknown: changed
    assert index.classify(listing, _SEEN, "L1").to_pylist() == [U, C, N, C, R, N]
    # under L2 everything L1 labelled is relabelled, m is unchanged
    assert index.classify(listing, _SEEN, "L2").to_pylist() == [R, C, N, C, U, N]
    # source mode: whatever labelled it
    assert index.classify(listing, _SEEN, None).to_pylist() == [U, C, N, C, U, N]
    no_etags = pa.table({"uri": ["s3://b/a", "s3://b/z"], "etag": [None, None]})  # a null-typed column
    assert index.classify(no_etags, _SEEN, "L1").to_pylist() == [C, N]
    assert index.labelled_by(_SEEN, listing.slice(4, 1), "L1") == ["r2"]
    assert index.labelled_by(_SEEN, listing, "L2") == ["r1"]


def test_index_files_without_the_labelling_column_take_it_from_their_runs_plan(tmp_path):
    from datetime import UTC, datetime

    from schemas.fingerprint import labelling_id
    from schemas.manifest import Plan

    out = LocalStore(tmp_path)
    fp = {"model.conf": 0.4, "source.uri": "s3://b"}
    plan = Plan(run_id="old", shards=0, objects=0, listed=0, fingerprint=fp, created_at=datetime.now(UTC))
    out.put(RunLayout("old").plan, plan.model_dump_json().encode())
    old_part = pa.table({"uri": ["s3://b/a"], "etag": ["1"], "run_id": ["old"]})  # an index part of before
    out.put("index/part-old.parquet", parquet_bytes(old_part.replace_schema_metadata(INDEX_SCHEMA.metadata)))
    out.put(RunLayout("old").success, b"")
    loaded = index.load(out)
    assert loaded.to_pylist() == [
        {"uri": "s3://b/a", "etag": "1", "run_id": "old", "labelling": labelling_id({"model.conf": 0.4})}
    ]


def test_a_part_counts_once_its_run_is_committed_and_compaction_keeps_every_row(tmp_path, monkeypatch):
    monkeypatch.setattr(index, "COMPACT_AT", 3)
    out = LocalStore(tmp_path)
    index.add_run(out, "uncommitted", [_images([("s3://b/x.jpg", "e", "ok")])], "L1")  # no _SUCCESS
    assert index.load(out).num_rows == 0
    for i in range(5):
        _commit(out, f"r{i}", [(f"s3://b/{i}.jpg", f"e{i}", "ok"), ("s3://b/same.jpg", "s", "ok")], f"L{i % 2}")
    keys = sorted(o.key for o in out.list("index/"))
    # r3's commit found 3 counted parts (r0-r2) and merged them into its base, beside its own part
    # (a base holds committed runs only); r4 added a part.
    assert keys == [
        "index/base-r3.parquet",
        "index/part-r3.parquet",
        "index/part-r4.parquet",
        "index/part-uncommitted.parquet",
    ]
    loaded = index.load(out)
    pairs = sorted(set(zip(loaded["uri"].to_pylist(), loaded["etag"].to_pylist(), strict=True)))
    assert pairs == sorted([(f"s3://b/{i}.jpg", f"e{i}") for i in range(5)] + [("s3://b/same.jpg", "s")])
    base = read_parquet(out, "index/base-r3.parquet", "index")
    # r0..r2 plus one "same.jpg" row per labelling fingerprint (L0: r0, r2; L1: r1): duplicates merged
    assert sorted(base.to_pylist(), key=lambda r: (r["uri"], r["labelling"])) == [
        {"uri": f"s3://b/{i}.jpg", "etag": f"e{i}", "run_id": f"r{i}", "labelling": f"L{i % 2}"} for i in range(3)
    ] + [
        {"uri": "s3://b/same.jpg", "etag": "s", "run_id": "r2", "labelling": "L0"},
        {"uri": "s3://b/same.jpg", "etag": "s", "run_id": "r1", "labelling": "L1"},
    ]


def test_an_output_without_an_index_is_indexed_from_its_committed_runs(tmp_path):
    from tests.support.synthetic_run import make_run

    out = LocalStore(tmp_path)
    make_run(out, "old", n_images=0, masks_per_image=1, keys=["a.jpg"], source="s3://b")
    for obj in list(out.list("index/")):  # written before the index existed: the run only
        out.delete(obj.key)
    assert index.load(out).column("uri").to_pylist() == ["s3://b/a.jpg"]
    _commit(out, "new", [("s3://b/b.jpg", "e2", "ok")])
    assert sorted(o.key for o in out.list("index/")) == ["index/base-new.parquet", "index/part-new.parquet"]
    assert sorted(index.load(out).column("uri").to_pylist()) == ["s3://b/a.jpg", "s3://b/b.jpg"]


@pytest.mark.parametrize("n", [0, 1])
def test_empty_runs_index_nothing(tmp_path, n):
    out = LocalStore(tmp_path)
    _commit(out, "empty", [("s3://b/a.jpg", "e", "read_error")] * n)
    assert index.load(out).num_rows == 0


def _random_index(rng, n: int, run: str) -> pa.Table:
    uris = [f"s3://b/{rng.integers(0, 10**6):07d}/{'é' if i % 5 == 0 else 'x'}{i}.jpg" for i in range(n)]
    return pa.table({"uri": uris, "etag": [f"e{i % 7}" for i in range(n)], "run_id": [run] * n,
                     "labelling": [f"L{i % 2}" for i in range(n)]}, schema=INDEX_SCHEMA)  # fmt: skip


def test_index_files_are_sorted_out_of_core_and_read_by_range_exactly(tmp_path, monkeypatch):
    import numpy as np
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from workers.runs import index_files

    monkeypatch.setattr(index_files, "ROW_GROUP", 64)  # many row groups per file
    rng = np.random.default_rng(7)
    tables = [_random_index(rng, n, f"r{k}") for k, n in enumerate([1000, 333, 0, 1])]
    paths = []
    for k, t in enumerate(tables):
        raw = tmp_path / f"raw{k}.parquet"
        pq.write_table(t, raw)
        paths.append(tmp_path / f"sorted{k}.parquet")
        assert index_files.write_sorted([raw], paths[-1], tmp_path) == t.num_rows
        assert index_files.is_sorted(paths[-1]) and not index_files.is_sorted(raw)
        back = pq.read_table(paths[-1])
        assert back["uri"].to_pylist() == sorted(t["uri"].to_pylist())
        assert sorted(back.to_pylist(), key=str) == sorted(t.to_pylist(), key=str)
    assert pq.ParquetFile(paths[0]).metadata.num_row_groups == 16
    whole = pa.concat_tables(tables)
    everything = sorted(whole["uri"].to_pylist())

    def expected(lo: str, hi: str) -> list:
        inside = pc.and_(pc.greater_equal(whole["uri"], lo), pc.less_equal(whole["uri"], hi))
        return sorted(whole.filter(inside).to_pylist(), key=str)

    reader = index_files.RangeReader(paths)
    forward = [everything[i : i + 97] for i in range(0, len(everything), 97)]  # a planner's chunks, in order
    jumps = [everything[j : j + 40] for j in rng.integers(0, len(everything), 30)]  # and going back
    for chunk in forward + jumps + [["s3://a"], ["s3://z"], [everything[5], everything[-5]]]:
        got = reader.between(pa.array(chunk))
        assert sorted(got.to_pylist(), key=str) == expected(min(chunk), max(chunk)), chunk[:2]
    assert reader.between(pa.array([], pa.string())).num_rows == 0


def test_parts_are_written_sorted_and_unsorted_files_of_before_still_read(tmp_path):
    from workers.runs import index_files

    (tmp_path / "copy").mkdir()
    out = LocalStore(tmp_path / "out")
    rows = [(f"s3://b/{c}.jpg", "e", "ok") for c in "qbzam"]
    _commit(out, "new", rows)
    part = read_parquet(out, "index/part-new.parquet", "index")
    assert part["uri"].to_pylist() == sorted(u for u, _, _ in rows)
    assert part.schema.metadata[index_files.SORTED_KEY] == b"uri"
    unsorted = pa.table({"uri": ["s3://b/y.jpg", "s3://b/c.jpg"], "etag": ["1", "2"], "run_id": ["old", "old"],
                         "labelling": ["L1", "L1"]}, schema=INDEX_SCHEMA)  # fmt: skip
    out.put("index/part-old.parquet", parquet_bytes(unsorted))  # as commits wrote parts before they were sorted
    out.put(RunLayout("old").success, b"")
    everything = sorted([u for u, _, _ in rows] + ["s3://b/y.jpg", "s3://b/c.jpg"])
    assert sorted(index.load(out)["uri"].to_pylist()) == everything
    reader = index_files.RangeReader(index.local_copy(out, tmp_path / "copy"))
    got = reader.between(pa.array(["s3://b/b.jpg", "s3://b/d.jpg"]))
    assert sorted(got["uri"].to_pylist()) == ["s3://b/b.jpg", "s3://b/c.jpg"]


def test_an_index_file_that_is_not_an_index_is_one_line(tmp_path):
    out = LocalStore(tmp_path)
    _commit(out, "r", [("s3://b/a.jpg", "e", "ok")])
    out.put("index/part-r.parquet", b"garbage")
    with pytest.raises(TableError, match=r"index/part-r\.parquet is not a readable index table"):
        index.load(out)
