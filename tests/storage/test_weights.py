import hashlib

import boto3
import pytest

from schemas.errors import CheckpointError, StoreError
from schemas.job import StorageSpec
from workers.storage.weights import resolve_weights

DATA = b"pretend these are weights" * 1000
SHA = hashlib.sha256(DATA).hexdigest()


@pytest.fixture
def weights_uri(s3_endpoint, bucket):
    boto3.client("s3", endpoint_url=s3_endpoint).put_object(Bucket=bucket, Key="models/w v1.pt", Body=DATA)
    return f"s3://{bucket}/models/w v1.pt"


def test_fetched_once_into_the_cache(s3_endpoint, bucket, weights_uri, tmp_path):
    spec = StorageSpec(endpoint_url=s3_endpoint)
    path = resolve_weights(weights_uri, SHA, storage=spec, cache=tmp_path)
    assert path == tmp_path / SHA / "w v1.pt" and path.read_bytes() == DATA
    boto3.client("s3", endpoint_url=s3_endpoint).delete_object(Bucket=bucket, Key="models/w v1.pt")
    assert resolve_weights(weights_uri, SHA, storage=spec, cache=tmp_path) == path  # no second download
    assert [p.name for p in (tmp_path / SHA).iterdir() if not p.name.startswith(".")] == ["w v1.pt"]


def test_a_corrupt_cache_entry_is_fetched_again(s3_endpoint, weights_uri, tmp_path):
    spec = StorageSpec(endpoint_url=s3_endpoint)
    path = resolve_weights(weights_uri, SHA, storage=spec, cache=tmp_path)
    path.write_bytes(b"truncated")
    assert resolve_weights(weights_uri, SHA, storage=spec, cache=tmp_path).read_bytes() == DATA


def test_hash_mismatch_is_refused_and_nothing_is_cached(s3_endpoint, weights_uri, tmp_path):
    with pytest.raises(CheckpointError, match=f"has sha256 {SHA}, but 0+ is pinned"):
        resolve_weights(weights_uri, "0" * 64, storage=StorageSpec(endpoint_url=s3_endpoint), cache=tmp_path)
    assert not [p for p in (tmp_path / ("0" * 64)).iterdir() if not p.name.startswith(".lock")]


def test_unpinned_s3_weights_are_refused(weights_uri, tmp_path):
    with pytest.raises(CheckpointError, match="no pinned sha256"):
        resolve_weights(weights_uri, None, cache=tmp_path)


def test_missing_object_and_missing_file_are_named(s3_endpoint, bucket, tmp_path):
    with pytest.raises(StoreError, match=r"nope\.pt"):
        resolve_weights(f"s3://{bucket}/nope.pt", SHA, storage=StorageSpec(endpoint_url=s3_endpoint), cache=tmp_path)
    with pytest.raises(CheckpointError, match=r"missing\.pt does not exist"):
        resolve_weights(str(tmp_path / "missing.pt"), SHA)


def test_local_paths_are_returned_as_they_are(tmp_path):
    p = tmp_path / "w.pt"
    p.write_bytes(DATA)
    assert resolve_weights(str(p), SHA) == p
    assert resolve_weights(p.as_uri(), SHA) == p


def test_unpinned_weights_are_revalidated_and_fetched_again_when_changed(s3_endpoint, bucket, weights_uri, tmp_path):
    spec = StorageSpec(endpoint_url=s3_endpoint)
    first = resolve_weights(weights_uri, None, allow_unpinned=True, storage=spec, cache=tmp_path)
    assert first.read_bytes() == DATA
    assert resolve_weights(weights_uri, None, allow_unpinned=True, storage=spec, cache=tmp_path) == first  # cached
    new = b"retrained weights" * 500
    boto3.client("s3", endpoint_url=s3_endpoint).put_object(Bucket=bucket, Key="models/w v1.pt", Body=new)
    second = resolve_weights(weights_uri, None, allow_unpinned=True, storage=spec, cache=tmp_path)
    assert second != first and second.read_bytes() == new  # a changed object is never served from the cache
    boto3.client("s3", endpoint_url=s3_endpoint).delete_object(Bucket=bucket, Key="models/w v1.pt")
    with pytest.raises(StoreError, match=r"w v1\.pt does not exist"):
        resolve_weights(weights_uri, None, allow_unpinned=True, storage=spec, cache=tmp_path)
