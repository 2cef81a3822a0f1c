"""Listing a bucket with many requests in flight gives exactly what one sequential listing gives."""

import threading
from concurrent.futures import ThreadPoolExecutor

import boto3
import pytest

from schemas.job import StorageSpec
from workers.storage import S3Store, s3_listing


def _keys() -> list[str]:
    keys = [f"root-{i}.jpg" for i in range(5)] + ["a.jpg", "a0.jpg", "a+b c.jpg", "zz/é/ü.png", "a/", "a/.hidden"]
    keys += [f"cams/cam{c:02d}/2026-12-0{d}/f{i:03d}.jpg" for c in range(12) for d in range(1, 4) for i in range(30)]
    keys += [f"flat/{i:05d}.jpg" for i in range(300)]  # a folder of objects only
    keys += [f"deep/{'x/' * 6}{i}.jpg" for i in range(20)] + [f"a/b-{i}.jpg" for i in range(40)]
    return keys


@pytest.fixture(scope="module")
def filled(s3_endpoint):
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    name = "listing-many-prefixes"
    s3.create_bucket(Bucket=name)
    keys = _keys()
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda k: s3.put_object(Bucket=name, Key=f"data/{k}", Body=k.encode()), keys))
    return name, sorted(k for k in keys if not k.endswith("/"))


def _listing(endpoint: str, bucket: str, concurrency: int, prefix: str = "", start_after=None) -> list[tuple]:
    store = S3Store(f"s3://{bucket}/data", StorageSpec(endpoint_url=endpoint, list_concurrency=concurrency))
    return [(o.key, o.size, o.etag) for o in store.list(prefix, start_after=start_after)]


def test_a_concurrent_listing_equals_a_sequential_one(s3_endpoint, filled, monkeypatch):
    bucket, keys = filled
    monkeypatch.setattr(s3_listing, "MAX_DIRECT", 250)  # the flat folder is listed as one unit
    requests: list[str] = []
    lock = threading.Lock()
    real = s3_listing._split

    def counted(client, b, folder):
        with lock:
            requests.append(folder)
        return real(client, b, folder)

    monkeypatch.setattr(s3_listing, "_split", counted)
    sequential = _listing(s3_endpoint, bucket, 1)
    assert [k for k, _, _ in sequential] == keys and len(keys) == 1_450
    for concurrency in (2, 8, 64):
        assert _listing(s3_endpoint, bucket, concurrency) == sequential, concurrency
    assert {"data/", "data/cams/", "data/cams/cam00/", "data/flat/"} <= set(requests)  # split a level or two down
    for after in ("a.jpg", "a/b-17.jpg", "cams/cam03/", "cams/cam05/2026-12-02/f010.jpg", "flat/00299.jpg", "zz"):
        expected = [x for x in sequential if x[0] > after]
        assert _listing(s3_endpoint, bucket, 8, start_after=after) == expected, after
    assert _listing(s3_endpoint, bucket, 8, prefix="cams/cam07/") == [x for x in sequential
                                                                      if x[0].startswith("cams/cam07/")]  # fmt: skip


def test_a_listing_error_in_a_folder_reaches_the_reader_in_order(s3_endpoint, filled, monkeypatch):
    from schemas.errors import StoreError

    bucket, keys = filled
    store = S3Store(f"s3://{bucket}/data", StorageSpec(endpoint_url=s3_endpoint, list_concurrency=8))
    real = store.client.get_paginator

    def failing(name):
        paginator = real(name)
        paginate = paginator.paginate

        def pages(**kw):
            if kw.get("Prefix", "").startswith("data/cams/cam04/") and "Delimiter" not in kw:
                raise store.client.exceptions.NoSuchBucket({"Error": {"Code": "NoSuchBucket"}}, "ListObjectsV2")
            return paginate(**kw)

        paginator.paginate = pages
        return paginator

    monkeypatch.setattr(store.client, "get_paginator", failing)
    got = []
    with pytest.raises(StoreError, match="NoSuchBucket"):
        for o in store.list():
            got.append(o.key)
    assert got == [k for k in keys if k < "cams/cam04/"]  # everything before the failing folder, in order
