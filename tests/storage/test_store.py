import pickle

import boto3
import pytest

from schemas.errors import ObjectNotFoundError, ObjectTooLargeError, StoreError, UnsafeKeyError
from schemas.job import StorageSpec
from workers.storage import LocalStore, S3Store, open_store, safe_key

KEYS = ["plain.jpg", "with space/a b.jpg", "ünïcode/場面.png", "deep/a/b/c/d.jpg", "x/+&=;,@$#.jpg"]


def _stores(tmp_path, s3_endpoint, bucket):
    return [
        LocalStore(tmp_path / "root"),
        S3Store(f"s3://{bucket}/some/prefix", StorageSpec(endpoint_url=s3_endpoint)),
    ]


@pytest.mark.parametrize("kind", [0, 1], ids=["local", "s3"])
def test_round_trip_listing_and_head(tmp_path, s3_endpoint, bucket, kind):
    store = _stores(tmp_path, s3_endpoint, bucket)[kind]
    for i, k in enumerate(KEYS):
        store.put(k, bytes([i]) * (i + 1))
    listed = list(store.list())
    assert [o.key for o in listed] == sorted(KEYS)
    for o in listed:
        i = KEYS.index(o.key)
        assert store.get(o.key) == bytes([i]) * (i + 1)
        assert o.size == i + 1 and o.etag
        assert store.head(o.key) == o
    assert [o.key for o in store.list("deep/")] == ["deep/a/b/c/d.jpg"]
    assert store.head("missing.jpg") is None
    with pytest.raises(ObjectNotFoundError, match=r"missing\.jpg"):
        store.get("missing.jpg")
    store.delete("plain.jpg")
    store.delete("plain.jpg")  # deleting twice is not an error
    assert store.head("plain.jpg") is None


@pytest.mark.parametrize("kind", [0, 1], ids=["local", "s3"])
def test_byte_limit_is_enforced_without_reading_everything(tmp_path, s3_endpoint, bucket, kind):
    store = _stores(tmp_path, s3_endpoint, bucket)[kind]
    store.put("big.bin", b"x" * 5000)
    assert store.get("big.bin", max_bytes=5000) == b"x" * 5000
    with pytest.raises(ObjectTooLargeError, match=r"big\.bin.*5000 bytes.*limit of 4999"):
        store.get("big.bin", max_bytes=4999)


@pytest.mark.parametrize("kind", [0, 1], ids=["local", "s3"])
@pytest.mark.parametrize("key", ["../escape.parquet", "a/../../b", "/abs", "a//b", "a\\b", "", "./a", "a/."])
def test_writes_cannot_leave_the_root(tmp_path, s3_endpoint, bucket, kind, key):
    store = _stores(tmp_path, s3_endpoint, bucket)[kind]
    with pytest.raises(UnsafeKeyError, match="refusing"):
        store.put(key, b"x")
    assert list(store.list()) == []
    assert not (tmp_path / "escape.parquet").exists()


def test_local_reads_cannot_leave_the_root(tmp_path):
    (tmp_path / "secret").write_bytes(b"s")
    store = LocalStore(tmp_path / "root")
    with pytest.raises(UnsafeKeyError, match="outside"):
        store.get("../secret")


@pytest.mark.parametrize(
    "parts, ok",
    [(("runs", "r1", "masks", "shard-00001.parquet"), True), (("runs", ".."), False), (("a/", "b"), False)],
)
def test_safe_key(parts, ok):
    if ok:
        assert safe_key(*parts) == "/".join(parts)
    else:
        with pytest.raises(UnsafeKeyError):
            safe_key(*parts)


def test_local_put_is_atomic(tmp_path, monkeypatch):
    store = LocalStore(tmp_path)
    store.put("a/obj", b"old")

    def broken_fsync(fd):
        raise OSError("disk full")

    monkeypatch.setattr("os.fsync", broken_fsync)
    with pytest.raises(OSError, match="disk full"):
        store.put("a/obj", b"new" * 1000)
    monkeypatch.undo()
    assert store.get("a/obj") == b"old"
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["obj"]  # no temporary file left behind


def test_s3_listing_paginates_over_a_thousand_objects(s3_endpoint, bucket):
    client = boto3.client("s3", endpoint_url=s3_endpoint)
    keys = [f"imgs/{i // 100:02d}/img {i:04d} ü.jpg" for i in range(1234)]
    for k in keys:
        client.put_object(Bucket=bucket, Key=k, Body=k.encode())
    client.put_object(Bucket=bucket, Key="other/not-listed.jpg", Body=b"x")
    store = S3Store(f"s3://{bucket}/imgs", StorageSpec(endpoint_url=s3_endpoint, list_concurrency=1))
    calls = []
    store.client.meta.events.register("before-call.s3.ListObjectsV2", lambda **kw: calls.append(1))
    listed = list(store.list())
    assert len(calls) == 2  # 1000 + 234: the second page was fetched
    concurrent = S3Store(f"s3://{bucket}/imgs", StorageSpec(endpoint_url=s3_endpoint))
    concurrent.client.meta.events.register("before-call.s3.ListObjectsV2", lambda **kw: calls.append(2))
    assert list(concurrent.list()) == listed
    assert calls.count(2) == 1 + 13  # the folders found by one request, then each of the 13 listed
    assert [o.key for o in listed] == sorted(k[len("imgs/") :] for k in keys)
    assert len({o.key for o in listed}) == 1234
    assert store.get(listed[7].key) == ("imgs/" + listed[7].key).encode()


def test_s3_multipart_upload_for_large_objects(s3_endpoint, bucket):
    spec = StorageSpec(endpoint_url=s3_endpoint, multipart_threshold=5 * 2**20)
    store = S3Store(f"s3://{bucket}/out", spec)
    data = bytes(range(256)) * (6 * 2**20 // 256)
    store.put("big.parquet", data)
    assert store.get("big.parquet") == data
    assert store.head("big.parquet").etag.endswith("-2")  # an ETag of a 2-part multipart upload
    store.put("small.parquet", b"abc")
    assert "-" not in store.head("small.parquet").etag


def test_s3_errors_name_the_object_and_never_the_secret(s3_endpoint):
    store = S3Store("s3://no-such-bucket-here/p", StorageSpec(endpoint_url=s3_endpoint, max_attempts=1))
    with pytest.raises(StoreError) as e:
        list(store.list())
    assert "no-such-bucket-here" in str(e.value) and "NoSuchBucket" in str(e.value)
    assert "testing" not in str(e.value)


def test_s3_store_pickles_without_its_client(s3_endpoint, bucket):
    store = S3Store(f"s3://{bucket}/p", StorageSpec(endpoint_url=s3_endpoint))
    store.put("k", b"v")
    copy = pickle.loads(pickle.dumps(store))
    assert copy.get("k") == b"v" and copy.uri == store.uri


def test_open_store_picks_the_implementation(tmp_path, s3_endpoint, bucket):
    assert isinstance(open_store(str(tmp_path)), LocalStore)
    assert isinstance(open_store(tmp_path.as_uri()), LocalStore)
    assert isinstance(open_store(f"s3://{bucket}", StorageSpec(endpoint_url=s3_endpoint)), S3Store)
