"""Sources at scale: a manifest table or an S3 Inventory instead of a listing; bad rows and files are named."""

import gzip
import io
import json

import boto3
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from schemas import parse_job
from schemas.errors import JobError, ListingError, ObjectNotFoundError
from tests.support.helpers import label_and_commit, plan_for, scene_bytes
from workers.runs.committed import CommittedRun
from workers.runs.planner import list_source
from workers.storage import LocalStore, open_store
from workers.storage.listings import open_listing


def _listed(spec, storage=None) -> tuple[list[tuple], list[str]]:
    skipped: list[str] = []
    t = list_source(open_store(spec.uri, storage), spec, skipped, storage)
    return list(zip(t["key"].to_pylist(), t["size"].to_pylist(), t["etag"].to_pylist(), strict=True)), skipped


def _spec(uri: str, **source):
    return parse_job({"source": {"uri": uri, **source}, "output": "/tmp/unused"}, environ={}).source


def test_a_parquet_manifest_is_listed_in_key_order_once_per_key(tmp_path):
    table = pa.table({
        "key": ["b/2.jpg", "a/1.jpg", "b/2.jpg", "c/readme.txt", "a/0.PNG", ""],
        "etag": ['"e2"', "e1", '"e2"', "e3", None, "e9"],
        "size": [20, 10, 20, 30, 5, 1],
        "camera": ["x"] * 6,
    })  # fmt: skip
    pq.write_table(table, tmp_path / "keys.parquet")
    listed, skipped = _listed(_spec(str(tmp_path / "src"), manifest=str(tmp_path / "keys.parquet")))
    assert listed == [("a/0.PNG", 5, None), ("a/1.jpg", 10, "e1"), ("b/2.jpg", 20, "e2")]
    assert skipped == [
        f'{tmp_path}/keys.parquet: row with key "" names no object under {LocalStore(tmp_path / "src").uri}; list '
        "objects under source.uri",
        f"b/2.jpg: listed 2 times in {tmp_path}/keys.parquet; labelled once (remove the duplicate rows)",
    ]


def test_a_csv_manifest_of_uris_keeps_the_objects_under_the_source(tmp_path):
    (tmp_path / "uris.csv").write_text(
        "uri,size\ns3://bkt/cams/z.jpg,7\ns3://bkt/cams/d/a.jpg,x\ns3://bkt/other/b.jpg,3\ns3://bkt/cams/,1\n"
    )
    listing = open_listing(_spec("s3://bkt/cams", manifest=str(tmp_path / "uris.csv")))
    skipped: list[str] = []
    t = pa.concat_tables(listing.batches(skipped))
    assert t.to_pylist() == [{"key": "d/a.jpg", "size": 0, "etag": None}, {"key": "z.jpg", "size": 7, "etag": None}]
    assert skipped == [
        f'{tmp_path}/uris.csv: row with uri "s3://bkt/other/b.jpg" names no object under s3://bkt/cams/; list '
        "objects under source.uri",
        f'{tmp_path}/uris.csv: row with uri "s3://bkt/cams/" names no object under s3://bkt/cams/; list objects '
        "under source.uri",
    ]
    after: list[str] = []
    assert pa.concat_tables(listing.batches(after, start_after="d/a.jpg"))["key"].to_pylist() == ["z.jpg"]


def test_a_json_lines_manifest_and_its_bad_inputs(tmp_path):
    (tmp_path / "k.jsonl").write_text('{"key": "x.jpg", "etag": "1"}\n{"key": "w.jpg"}\n')
    listed, _ = _listed(_spec(str(tmp_path), manifest=str(tmp_path / "k.jsonl")))
    assert listed == [("w.jpg", 0, None), ("x.jpg", 0, "1")]

    (tmp_path / "nokey.csv").write_text("path,size\na.jpg,1\n")
    with pytest.raises(ListingError) as e:
        _listed(_spec(str(tmp_path), manifest=str(tmp_path / "nokey.csv")))
    assert str(e.value) == (
        f"source.manifest {tmp_path}/nokey.csv has no key or uri column (it has path, size); name the column of "
        "object keys relative to source.uri `key`, or of full URIs `uri`"
    )
    (tmp_path / "bad.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(ListingError, match=rf"^source.manifest {tmp_path}/bad.parquet cannot be read as parquet \("):
        _listed(_spec(str(tmp_path), manifest=str(tmp_path / "bad.parquet")))
    with pytest.raises(ListingError, match=r"unknown format; name it \.parquet, \.csv"):
        _listed(_spec(str(tmp_path), manifest=str(tmp_path / "k.xlsx")))
    with pytest.raises(ObjectNotFoundError, match=rf"source.manifest {tmp_path}/gone.csv does not exist"):
        _listed(_spec(str(tmp_path), manifest=str(tmp_path / "gone.csv")))
    with pytest.raises(JobError, match=r"set source\.manifest or source\.inventory, not both"):
        _spec("s3://b/p", manifest="s3://b/m.csv", inventory="s3://b/manifest.json")


def test_a_manifest_run_is_labelled_then_skipped_as_unchanged(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(3):
        (src / f"{i}.jpg").write_bytes(scene_bytes(i))
    store = LocalStore(src)
    objs = list(store.list())
    pq.write_table(pa.table({"key": [o.key for o in objs[:2]], "etag": [o.etag for o in objs[:2]]}),
                   tmp_path / "m.parquet")  # fmt: skip
    job = parse_job({"source": {"uri": str(src), "manifest": str(tmp_path / "m.parquet")},
                     "output": str(tmp_path / "out")}, environ={})  # fmt: skip
    plan = label_and_commit(job, "first")
    assert (plan.objects, plan.fingerprint["source.manifest"]) == (2, str(tmp_path / "m.parquet"))
    assert plan.fingerprint["source.listing_etag"] == LocalStore(tmp_path).head("m.parquet").etag
    assert plan_for(job, "again", incremental=True).skipped == 2  # the index matches manifest objects by URI
    run = CommittedRun(LocalStore(tmp_path / "out"), "first")  # what exports, reprompt and the tables read
    run.verify()
    assert sorted(run.table("images", s)["key"].to_pylist()[0] for s in run.states) == ["0.jpg"]


def _inventory(s3, bucket: str, fmt: str) -> str:
    rows = [  # bucket, key as S3 Inventory writes it, size, etag, latest, delete marker
        (bucket, "cams/a%20b.jpg", "10", "e1", "true", "false"),
        (bucket, "cams/c+d%2Be.jpg", "11", "e2", "true", "false"),
        (bucket, "cams/old.jpg", "12", "e3", "false", "false"),
        (bucket, "cams/gone.jpg", "0", "", "true", "true"),
        (bucket, "other/x.jpg", "13", "e4", "true", "false"),
        ("another-bucket", "cams/y.jpg", "14", "e5", "true", "false"),
    ]
    files = []
    for i, part in enumerate((rows[:3], rows[3:])):
        key = f"inv/{bucket}/cfg/data/part-{i}.{'csv.gz' if fmt == 'CSV' else 'parquet'}"
        if fmt == "CSV":
            text = "".join(",".join(f'"{v}"' for v in r) + "\n" for r in part)
            body = gzip.compress(text.encode())
        else:
            from urllib.parse import unquote_plus

            t = pa.table({
                "bucket": [r[0] for r in part], "key": [unquote_plus(r[1]) for r in part],
                "size": pa.array([int(r[2]) for r in part], pa.int64()), "e_tag": [r[3] for r in part],
                "is_latest": [r[4] == "true" for r in part], "is_delete_marker": [r[5] == "true" for r in part],
            })  # fmt: skip
            buf = io.BytesIO()
            pq.write_table(t, buf)
            body = buf.getvalue()
        s3.put_object(Bucket=bucket, Key=key, Body=body)
        files.append({"key": key, "size": len(body), "MD5checksum": "0"})
    manifest = {
        "sourceBucket": bucket, "destinationBucket": f"arn:aws:s3:::{bucket}", "fileFormat": fmt,
        "fileSchema": "Bucket, Key, Size, ETag, IsLatest, IsDeleteMarker", "files": files,
    }  # fmt: skip
    s3.put_object(Bucket=bucket, Key=f"inv/{bucket}/cfg/2026-12-01T00-00Z/manifest.json", Body=json.dumps(manifest))
    return f"s3://{bucket}/inv/{bucket}/cfg/2026-12-01T00-00Z/manifest.json"


@pytest.mark.parametrize("fmt", ["CSV", "Parquet"])
def test_an_s3_inventory_lists_the_latest_objects_under_the_source(s3_endpoint, bucket, fmt):
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    uri = _inventory(s3, bucket, fmt)
    storage = parse_job({"source": {"uri": "s3://x/y"}, "output": "/tmp/o",
                         "storage": {"endpoint_url": s3_endpoint}}, environ={}).storage  # fmt: skip
    listed, skipped = _listed(_spec(f"s3://{bucket}/cams", inventory=uri), storage)
    assert listed == [("a b.jpg", 10, "e1"), ("c d+e.jpg", 11, "e2")] and skipped == []


def test_bad_inventory_manifests_are_refused_naming_the_fix(s3_endpoint, bucket):
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    storage = parse_job({"source": {"uri": "s3://x/y"}, "output": "/tmp/o",
                         "storage": {"endpoint_url": s3_endpoint}}, environ={}).storage  # fmt: skip
    good = {"sourceBucket": bucket, "destinationBucket": f"arn:aws:s3:::{bucket}", "fileFormat": "CSV",
            "fileSchema": "Bucket, Key", "files": []}  # fmt: skip
    cases = {
        "notjson": (b"{oops", "is not JSON"),
        "missing": (json.dumps({"files": []}).encode(), "it lacks sourceBucket, destinationBucket, fileFormat;"),
        "orc": (json.dumps({**good, "fileFormat": "ORC"}).encode(), "format ORC is not read; configure the inventory"),
        "otherbucket": (json.dumps({**good, "sourceBucket": "elsewhere"}).encode(),
                        f"lists bucket elsewhere, but source.uri is in bucket {bucket}"),
        "noschema": (json.dumps({**good, "fileSchema": "Size, ETag"}).encode(), "its fileSchema lacks Bucket or Key"),
    }  # fmt: skip
    for name, (body, message) in cases.items():
        s3.put_object(Bucket=bucket, Key=f"{name}/manifest.json", Body=body)
        with pytest.raises(ListingError, match=message):
            _listed(_spec(f"s3://{bucket}/cams", inventory=f"s3://{bucket}/{name}/manifest.json"), storage)
    with pytest.raises(ObjectNotFoundError, match=r"does not exist; check source\.inventory"):
        _listed(_spec(f"s3://{bucket}/cams", inventory=f"s3://{bucket}/none/manifest.json"), storage)
    with pytest.raises(JobError, match=r"give the s3:// URI of its manifest\.json"):
        _spec("/local/folder", inventory=f"s3://{bucket}/x/manifest.json")
