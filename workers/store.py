"""Object storage: one small interface, an S3 implementation (boto3) and a local-folder one.

A store is rooted at a URI (s3://bucket/prefix or a folder); keys are relative to that root and use
"/" separators. Readers never see a half-written object: an S3 PUT (or completed multipart upload)
is atomic, and the local store writes a temporary file in the same folder and renames it.

Keys written by this project are built with `safe_key`, which refuses anything that could escape
the root ("..", absolute paths, backslashes, empty segments), so no source key can steer an output
outside the output prefix.
"""

from __future__ import annotations

import io
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from schemas.job import StorageSpec

_TMP_PREFIX = ".fastsam-tmp-"


class StoreError(OSError):
    """An object could not be read or written; the message names it and says why."""


class ObjectNotFoundError(StoreError):
    """The object does not exist."""


class ObjectTooLargeError(StoreError):
    """The object is bigger than the caller's byte limit."""


@dataclass(frozen=True)
class ObjectInfo:
    """One object from a listing.

    Attributes:
        key: relative to the store's root, "/"-separated.
        size: bytes.
        etag: S3 ETag without quotes, or "size-mtime_ns" for local files: changes when the content does.
    """

    key: str
    size: int
    etag: str | None


class ObjectStore(Protocol):
    """What the pipeline needs from object storage."""

    uri: str

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Every object whose key starts with `prefix`, in key order, streamed page by page."""
        ...

    def get(self, key: str, max_bytes: int | None = None) -> bytes:
        """The object's bytes. Raises ObjectNotFoundError, ObjectTooLargeError (over `max_bytes`) or StoreError."""
        ...

    def put(self, key: str, data: bytes) -> None:
        """Write atomically (readers see the old object, or the whole new one)."""
        ...

    def head(self, key: str) -> ObjectInfo | None:
        """The object's listing entry, or None when it does not exist."""
        ...

    def delete(self, key: str) -> None:
        """Remove the object; no error when it does not exist."""
        ...

    def uri_of(self, key: str) -> str:
        """A URI naming the object, for tables and messages."""
        ...


def split_s3_uri(uri: str) -> tuple[str, str]:
    """s3://bucket/rest -> (bucket, rest); rest may be empty.

    Raises:
        ValueError: not an s3:// URI, or no bucket.
    """
    if not uri.startswith("s3://"):
        raise ValueError(f"expected an s3:// URI, but got {uri!r}")
    bucket, _, rest = uri[5:].partition("/")
    if not bucket:
        raise ValueError(f"{uri!r} has no bucket; write s3://BUCKET/PREFIX")
    return bucket, rest


def _local_info(key: str, st: os.stat_result) -> ObjectInfo:
    """A local file's listing entry; its ETag stand-in changes when its size or mtime does."""
    return ObjectInfo(key, st.st_size, f"{st.st_size}-{st.st_mtime_ns}")


def safe_key(*parts: str) -> str:
    """Join key segments with "/", refusing anything that could leave the store's root.

    Raises:
        ValueError: for empty, ".", ".." segments, absolute keys, backslashes or NUL characters.
    """
    key = "/".join(parts)
    segments = key.split("/")
    if not key or any(s in ("", ".", "..") for s in segments) or "\\" in key or "\x00" in key:
        raise ValueError(f"refusing object key {key!r}: keys must be relative, without '..', '.', '//' or '\\'")
    return key


class LocalStore:
    """A folder as an object store. Keys are paths relative to the folder."""

    def __init__(self, root: str | Path):
        self.root = Path(str(root).removeprefix("file://")).expanduser().resolve()
        self.uri = self.root.as_uri()

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if path != self.root and self.root not in path.parents:
            raise ValueError(f"refusing key {key!r}: it resolves outside {self.root}")
        return path

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """See `ObjectStore.list`. Temporary files of unfinished writes are not listed."""
        if not self.root.is_dir():
            return
        keys = []
        for dirpath, _, filenames in os.walk(self.root):
            rel_dir = Path(dirpath).relative_to(self.root).as_posix()
            for name in filenames:
                key = name if rel_dir == "." else f"{rel_dir}/{name}"
                if not name.startswith(_TMP_PREFIX) and key.startswith(prefix):
                    keys.append(key)
        for key in sorted(keys):  # code-point order = UTF-8 byte order, as S3 lists
            try:
                st = (self.root / key).stat()
            except FileNotFoundError:  # deleted since the walk
                continue
            yield _local_info(key, st)

    def get(self, key: str, max_bytes: int | None = None) -> bytes:
        """See `ObjectStore.get`."""
        path = self._path(key)
        try:
            with open(path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                if max_bytes is not None and size > max_bytes:
                    limit = f"over the limit of {max_bytes} (limits.max_bytes)"
                    raise ObjectTooLargeError(f"{path} is {size} bytes, {limit}")
                return f.read()
        except FileNotFoundError:
            raise ObjectNotFoundError(f"{path} does not exist") from None
        except IsADirectoryError:
            raise StoreError(f"{path} is a folder, not an object") from None
        except PermissionError:
            raise StoreError(f"{path} is not readable: permission denied; check the file's permissions") from None

    def put(self, key: str, data: bytes) -> None:
        """See `ObjectStore.put`: written to a temporary file in the same folder, then renamed."""
        path = self._path(safe_key(key))
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=_TMP_PREFIX, dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def head(self, key: str) -> ObjectInfo | None:
        """See `ObjectStore.head`."""
        try:
            st = self._path(key).stat()
        except FileNotFoundError:
            return None
        return _local_info(key, st)

    def delete(self, key: str) -> None:
        """See `ObjectStore.delete`."""
        self._path(key).unlink(missing_ok=True)

    def uri_of(self, key: str) -> str:
        """file:// URI of the object (characters percent-encoded as in `Path.as_uri`)."""
        return (self.root / key).as_uri()


class S3Store:
    """An S3 (or S3-compatible) bucket and prefix as an object store, through boto3.

    Requests retry with botocore's standard or adaptive mode; listings are paginated and streamed;
    reads stream with a byte limit; objects of `multipart_threshold` bytes or more are uploaded in
    parts. Credentials come from boto3's chain (environment, profile, instance role).
    """

    def __init__(self, uri: str, storage: StorageSpec | None = None, max_pool_connections: int = 16):
        import boto3
        from botocore.config import Config

        bucket, prefix = split_s3_uri(uri)
        self.bucket = bucket
        self.prefix = prefix.rstrip("/") + "/" if prefix.strip("/") else ""
        self.uri = f"s3://{bucket}/{self.prefix}"
        self.storage = storage or StorageSpec()
        s = self.storage
        session = boto3.session.Session(profile_name=s.profile, region_name=s.region)
        config = Config(
            retries={"mode": s.retry_mode, "max_attempts": s.max_attempts},
            max_pool_connections=max_pool_connections,
        )
        self.client = session.client("s3", endpoint_url=s.endpoint_url, config=config)

    def __reduce__(self):
        # boto3 clients do not pickle; a copy sent to another process makes its own client.
        return (S3Store, (self.uri, self.storage))

    def describe_error(self, key: str, e: Exception) -> StoreError:
        """A StoreError naming the object, the error code and a likely fix (never credentials)."""
        code = getattr(e, "response", {}).get("Error", {}).get("Code", type(e).__name__)
        hint = {
            "AccessDenied": "check the credentials' permissions on this bucket and prefix",
            "NoSuchBucket": "check the bucket name and storage.endpoint_url",
            "InvalidAccessKeyId": "check the credentials in the environment or profile",
            "SignatureDoesNotMatch": "check the credentials in the environment or profile",
        }.get(code, "see the error code; transient errors were already retried")
        return StoreError(f"{self.uri_of(key)}: {code}; {hint}")

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """See `ObjectStore.list`."""
        from botocore.exceptions import BotoCoreError, ClientError

        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self.prefix + prefix)
        try:
            for page in pages:
                for obj in page.get("Contents", ()):
                    key = obj["Key"][len(self.prefix) :]
                    if key and not obj["Key"].endswith("/"):
                        yield ObjectInfo(key, int(obj["Size"]), obj.get("ETag", "").strip('"') or None)
        except (ClientError, BotoCoreError) as e:
            raise self.describe_error(prefix, e) from None

    def get(self, key: str, max_bytes: int | None = None) -> bytes:
        """See `ObjectStore.get`: the body is streamed and never read past `max_bytes`."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            resp = self.client.get_object(Bucket=self.bucket, Key=self.prefix + key)
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                raise ObjectNotFoundError(f"{self.uri_of(key)} does not exist") from None
            raise self.describe_error(key, e) from None
        except BotoCoreError as e:
            raise self.describe_error(key, e) from None
        body = resp["Body"]
        try:
            size = int(resp.get("ContentLength", -1))
            if max_bytes is not None and size > max_bytes:
                raise ObjectTooLargeError(
                    f"{self.uri_of(key)} is {size} bytes, over the limit of {max_bytes} (limits.max_bytes)"
                )
            buf = io.BytesIO()
            for chunk in body.iter_chunks(1 << 20):
                buf.write(chunk)
                if max_bytes is not None and buf.tell() > max_bytes:
                    raise ObjectTooLargeError(f"{self.uri_of(key)} is over the limit of {max_bytes} bytes")
            return buf.getvalue()
        except (ClientError, BotoCoreError) as e:
            raise self.describe_error(key, e) from None
        finally:
            body.close()

    def put(self, key: str, data: bytes) -> None:
        """See `ObjectStore.put`; multipart at or above storage.multipart_threshold bytes."""
        from boto3.s3.transfer import TransferConfig
        from botocore.exceptions import BotoCoreError, ClientError

        full = self.prefix + safe_key(key)
        try:
            if len(data) < self.storage.multipart_threshold:
                self.client.put_object(Bucket=self.bucket, Key=full, Body=data)
            else:
                cfg = TransferConfig(
                    multipart_threshold=self.storage.multipart_threshold,
                    multipart_chunksize=self.storage.multipart_threshold,
                )
                self.client.upload_fileobj(io.BytesIO(data), self.bucket, full, Config=cfg)
        except (ClientError, BotoCoreError) as e:
            raise self.describe_error(key, e) from None

    def head(self, key: str) -> ObjectInfo | None:
        """See `ObjectStore.head`."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            resp = self.client.head_object(Bucket=self.bucket, Key=self.prefix + key)
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise self.describe_error(key, e) from None
        except BotoCoreError as e:
            raise self.describe_error(key, e) from None
        return ObjectInfo(key, int(resp["ContentLength"]), resp.get("ETag", "").strip('"') or None)

    def delete(self, key: str) -> None:
        """See `ObjectStore.delete`."""
        self.client.delete_object(Bucket=self.bucket, Key=self.prefix + key)

    def uri_of(self, key: str) -> str:
        """s3://bucket/prefix/key (the key as stored, not percent-encoded)."""
        return f"s3://{self.bucket}/{self.prefix}{key}"


def open_store(uri: str, storage: StorageSpec | None = None) -> ObjectStore:
    """The store rooted at `uri`: S3Store for s3://, LocalStore for a path or file:// URI."""
    if uri.startswith("s3://"):
        return S3Store(uri, storage)
    return LocalStore(uri)


def display_key(key: str) -> str:
    """A key made safe to print on one line (control characters escaped)."""
    return key if key.isprintable() else key.encode("unicode_escape").decode("ascii")
