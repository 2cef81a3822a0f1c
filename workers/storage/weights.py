"""Model weights from a path or an s3:// URI, fetched once per machine into a local cache.

Cached files live at `{cache}/{sha256}/{file name}`; a file lock makes actors on one machine share
one download. A cached file is re-hashed before use, and a fetched file is hashed before it is
moved into place, so a truncated or swapped download is never loaded.

Unpinned objects (allowed by the operator only) have no hash to check a cached copy against: they
are cached under their URI and ETag, the object is asked for its ETag at every resolve (every actor
start), and a changed object is fetched again (an object that changes during the download is refused).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import tempfile
from pathlib import Path

from fastsam_core.checkpoints import sha256_file
from schemas.errors import CheckpointError
from schemas.job import StorageSpec
from schemas.uri import Uri

#: Cache folder unless FASTSAM_LABEL_CACHE says otherwise.
DEFAULT_CACHE = Path.home() / ".cache" / "fastsam-label" / "weights"


def cache_dir() -> Path:
    """The weights cache folder (FASTSAM_LABEL_CACHE, or ~/.cache/fastsam-label/weights)."""
    return Path(os.environ.get("FASTSAM_LABEL_CACHE", DEFAULT_CACHE)).expanduser()


def resolve_weights(
    uri: str,
    sha256: str | None,
    allow_unpinned: bool = False,
    storage: StorageSpec | None = None,
    cache: Path | None = None,
) -> Path:
    """A local file holding the weights at `uri`.

    Local paths are returned as they are (the loader verifies them). s3:// objects are downloaded
    once into the cache and verified against `sha256`.

    Raises:
        CheckpointError: the hash does not match, or an s3:// URI has no pinned hash and
            `allow_unpinned` is False.
        StoreError: the object cannot be fetched.
    """
    where = Uri.parse(uri)
    if not where.is_s3:
        path = Path(where.path)
        if not path.is_file():
            raise CheckpointError(f"weights file {path} does not exist; check the path")
        return path
    if sha256 is None and not allow_unpinned:
        raise CheckpointError(f"{uri} has no pinned sha256; pin one, or allow unpinned weights")
    from schemas.errors import ObjectNotFoundError
    from workers.storage.s3 import S3Store

    bucket, key = where.bucket, where.path
    name = Path(key).name
    if not key or not name:
        raise CheckpointError(f"{uri} does not name an object; write s3://BUCKET/KEY")
    store = S3Store(f"s3://{bucket}", storage)
    etag = None
    if sha256 is None:
        info = store.head(key)
        if info is None:
            raise ObjectNotFoundError(f"{uri} does not exist; check the URI")
        if info.etag is None:
            raise CheckpointError(f"{uri} has no ETag, so an unpinned copy cannot be checked; pin its sha256")
        etag = info.etag
        tag = hashlib.sha256(f"{uri}\n{etag}".encode()).hexdigest()[:24]
    folder = (cache or cache_dir()) / (sha256 or f"unpinned-{tag}")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    with open(folder / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one download per machine; the others wait, then reuse it
        if path.is_file() and (sha256 is None or sha256_file(path) == sha256):
            return path
        fd, tmp = tempfile.mkstemp(prefix=".download-", dir=folder)
        os.close(fd)
        try:
            try:
                store.client.download_file(bucket, key, tmp)
            except Exception as e:
                raise store.describe_error(key, e) from None
            after = store.head(key) if etag is not None else None
            if after is not None and after.etag != etag:
                raise CheckpointError(f"{uri} changed while it was downloaded; run again")
            got = sha256_file(tmp)
            if sha256 is not None and got != sha256:
                raise CheckpointError(f"{uri} has sha256 {got}, but {sha256} is pinned; check the URI or the pin")
            os.replace(tmp, path)
        finally:
            Path(tmp).unlink(missing_ok=True)
    return path
