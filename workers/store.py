"""Object storage: one small interface, an S3 implementation (boto3) and a local-folder one.

A store is rooted at a URI (s3://bucket/prefix or a folder); keys are relative to that root and use
"/" separators. Readers never see a half-written object: an S3 PUT (or completed multipart upload)
is atomic, and the local store writes a temporary file in the same folder and renames it.

Keys written by this project are built with `safe_key`, which refuses anything that could escape
the root ("..", absolute paths, backslashes, empty segments), so no source key can steer an output
outside the output prefix.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import random
import shutil
import stat
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from schemas.errors import (
    NotAFileError,
    ObjectNotFoundError,
    ObjectTooLargeError,
    ReadDeadlineError,
    StoreAccessError,
    StoreError,
    StoreUnavailableError,
    UnsafeKeyError,
    UriError,
)
from schemas.job import StorageSpec

_TMP_PREFIX = ".fastsam-tmp-"


class _BodyCutShortError(Exception):
    """A response body ended early or broke while streaming."""


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    """One object from a listing.

    Attributes:
        key: relative to the store's root, "/"-separated.
        size: bytes.
        etag: S3 ETag without quotes, or "size-mtime_ns" for local files: changes when the content does;
            None when the store did not say (then the object counts as changed).
    """

    key: str
    size: int
    etag: str | None


class ObjectStore(Protocol):
    """What the pipeline needs from object storage."""

    uri: str

    def list(self, prefix: str = "", skipped: list[str] | None = None) -> Iterator[ObjectInfo]:
        """Every object whose key starts with `prefix`, in key order, streamed page by page.

        Parts of the store that could not be listed (a local folder without permission, a symbolic
        link to a folder, which is not followed) are appended to `skipped` as "path: why".
        """
        ...

    def get(self, key: str, max_bytes: int | None = None) -> bytes:
        """The object's bytes. Raises ObjectNotFoundError, ObjectTooLargeError (over `max_bytes`) or StoreError."""
        ...

    def read(self, key: str, max_bytes: int | None = None) -> tuple[bytes, ObjectInfo]:
        """The object's bytes and the size and ETag of exactly those bytes (not of a listing)."""
        ...

    def tail(self, key: str, n: int) -> bytes:
        """The object's last `n` bytes (all of it when it is shorter)."""
        ...

    def put(self, key: str, data: bytes) -> None:
        """Write atomically (readers see the old object, or the whole new one)."""
        ...

    def put_file(self, key: str, path: Path) -> None:
        """Write a local file's contents, streamed from disk (not read into memory), atomically."""
        ...

    def create(self, key: str, data: bytes) -> bool:
        """Write only if the key does not exist yet, atomically: True when this call created it.

        Of several writers racing for one key exactly one gets True, and the object holds its bytes.
        """
        ...

    def copy(self, src: str, dst: str) -> None:
        """Copy an object within the store (server-side on S3), atomically at `dst`."""
        ...

    def check_root(self) -> None:
        """Raise StoreError unless the store's root exists and can be listed (one request)."""
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
        raise UriError(f"expected an s3:// URI, but got {uri!r}")
    bucket, _, rest = uri[5:].partition("/")
    if not bucket:
        raise UriError(f"{uri!r} has no bucket; write s3://BUCKET/PREFIX")
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
        raise UnsafeKeyError(f"refusing object key {key!r}: keys must be relative, without '..', '.', '//' or '\\'")
    return key


class LocalStore:
    """A folder as an object store. Keys are paths relative to the folder."""

    def __init__(self, root: str | Path):
        self.root = Path(str(root).removeprefix("file://")).expanduser().resolve()
        self.uri = self.root.as_uri()

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if path != self.root and self.root not in path.parents:
            raise UnsafeKeyError(f"refusing key {key!r}: it resolves outside {self.root}")
        return path

    def list(self, prefix: str = "", skipped: list[str] | None = None) -> Iterator[ObjectInfo]:
        """See `ObjectStore.list`. Temporary files of unfinished writes are not listed.

        Symbolic links to folders are not followed (a link can lead outside the source, or in a
        circle, and its files would be listed twice); they, and folders that cannot be read, are
        reported in `skipped`. Files of every kind are listed (a read refuses all but regular files).
        """
        if not self.root.is_dir():
            return
        keys = []

        def unreadable(e: OSError) -> None:
            if skipped is not None:
                skipped.append(f"{self._rel(e.filename)}: {e.strerror or e}")

        for dirpath, dirnames, filenames in os.walk(self.root, onerror=unreadable):
            rel_dir = Path(dirpath).relative_to(self.root).as_posix()
            for name in dirnames:
                if skipped is not None and os.path.islink(os.path.join(dirpath, name)):
                    skipped.append(
                        f"{self._rel(os.path.join(dirpath, name))}: a symbolic link to a folder, not followed"
                    )
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

    def _rel(self, path: str | os.PathLike) -> str:
        """A path under the root, relative to it, for messages."""
        try:
            return display_key(Path(path).relative_to(self.root).as_posix())
        except ValueError:
            return display_key(str(path))

    def get(self, key: str, max_bytes: int | None = None) -> bytes:
        """See `ObjectStore.get`."""
        return self.read(key, max_bytes)[0]

    def read(self, key: str, max_bytes: int | None = None) -> tuple[bytes, ObjectInfo]:
        """See `ObjectStore.read`: size and ETag from the open file, so they describe the bytes read.

        Only regular files are read: the file is opened without blocking (opening a named pipe for
        reading would wait for a writer forever) and anything else raises NotAFileError.
        """
        path = self._path(key)
        try:
            with open(os.open(path, os.O_RDONLY | os.O_NONBLOCK), "rb") as f:
                st = os.fstat(f.fileno())
                if not stat.S_ISREG(st.st_mode):
                    kind = _FILE_KINDS.get(stat.S_IFMT(st.st_mode), "not a regular file")
                    raise NotAFileError(f"{path} is {kind}; only regular files are read (move it out of the source)")
                if max_bytes is not None and st.st_size > max_bytes:
                    limit = f"over the limit of {max_bytes} (limits.max_bytes)"
                    raise ObjectTooLargeError(f"{path} is {st.st_size} bytes, {limit}")
                return f.read(), _local_info(key, st)
        except StoreError:
            raise
        except OSError as e:
            raise _local_error(path, e, "read") from None

    def tail(self, key: str, n: int) -> bytes:
        """See `ObjectStore.tail`."""
        path = self._path(key)
        try:
            with open(path, "rb") as f:
                f.seek(max(os.fstat(f.fileno()).st_size - n, 0))
                return f.read()
        except OSError as e:
            raise _local_error(path, e, "read") from None

    def _write_tmp(self, key: str, data: bytes) -> tuple[Path, str]:
        """(final path, temporary file beside it holding `data`, flushed to disk)."""
        path = self._path(safe_key(key))
        tmp = None
        try:
            for _ in range(3):  # a delete may remove an empty folder between mkdir and mkstemp
                path.parent.mkdir(parents=True, exist_ok=True)
                try:
                    fd, tmp = tempfile.mkstemp(prefix=_TMP_PREFIX, dir=path.parent)
                    break
                except FileNotFoundError:
                    continue
            else:
                fd, tmp = tempfile.mkstemp(prefix=_TMP_PREFIX, dir=path.parent)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        except BaseException as e:
            if tmp is not None:
                Path(tmp).unlink(missing_ok=True)
            if isinstance(e, OSError):
                raise _local_error(path, e, "write") from None
            raise
        return path, tmp

    def put(self, key: str, data: bytes) -> None:
        """See `ObjectStore.put`: written to a temporary file in the same folder, then renamed."""
        path, tmp = self._write_tmp(key, data)
        try:
            os.replace(tmp, path)
        except OSError as e:
            raise _local_error(path, e, "write") from None
        finally:
            Path(tmp).unlink(missing_ok=True)

    @staticmethod
    def _install(target: Path, fill: Callable[[Path], object]) -> None:
        """Make `target` atomically: `fill` a temporary path beside it, then rename that into place."""
        tmp = target.parent / f"{_TMP_PREFIX}{os.urandom(8).hex()}"
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            fill(tmp)
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)

    def put_file(self, key: str, path: Path) -> None:
        """See `ObjectStore.put_file`: copied beside the key, then renamed."""
        target = self._path(safe_key(key))
        try:
            self._install(target, lambda tmp: shutil.copyfile(path, tmp))
        except OSError as e:
            raise _local_error(target, e, "write") from None

    def create(self, key: str, data: bytes) -> bool:
        """See `ObjectStore.create`: a complete temporary file hard-linked to the key (link fails if it exists)."""
        path, tmp = self._write_tmp(key, data)
        try:
            os.link(tmp, path)
            return True
        except FileExistsError:
            return False
        except OSError as e:
            raise _local_error(path, e, "write") from None
        finally:
            Path(tmp).unlink(missing_ok=True)

    def copy(self, src: str, dst: str) -> None:
        """See `ObjectStore.copy`: a hard link renamed into place (no bytes copied)."""
        source, path = self._path(src), self._path(safe_key(dst))
        try:
            self._install(path, lambda tmp: os.link(source, tmp))
        except OSError as e:
            raise _local_error(source if isinstance(e, FileNotFoundError) else path, e, "copy") from None

    def check_root(self) -> None:
        """See `ObjectStore.check_root`."""
        if not self.root.is_dir():
            what = "is not a folder" if self.root.exists() else "does not exist"
            raise ObjectNotFoundError(f"{self.root} {what}; check the path")
        if not os.access(self.root, os.R_OK | os.X_OK):
            raise StoreAccessError(f"{self.root} is not readable: permission denied; check the folder's permissions")

    def head(self, key: str) -> ObjectInfo | None:
        """See `ObjectStore.head`."""
        try:
            st = self._path(key).stat()
        except FileNotFoundError:
            return None
        return _local_info(key, st)

    def delete(self, key: str) -> None:
        """See `ObjectStore.delete`; folders left empty are removed, as S3 has no empty folders."""
        path = self._path(key)
        try:
            path.unlink(missing_ok=True)
        except OSError as e:
            raise _local_error(path, e, "delete") from None
        for parent in path.parents:
            if parent == self.root or self.root not in parent.parents:
                break
            try:
                parent.rmdir()
            except OSError:  # not empty (or already gone): stop here
                break

    def uri_of(self, key: str) -> str:
        """file:// URI of the object (characters percent-encoded as in `Path.as_uri`)."""
        return (self.root / key).as_uri()


#: What a local entry that is not a regular file is, for messages.
_FILE_KINDS = {
    stat.S_IFIFO: "a named pipe (FIFO)",
    stat.S_IFSOCK: "a socket",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFDIR: "a folder",
}


def read_with_deadline(store: ObjectStore, key: str, max_bytes: int | None, seconds: float) -> tuple[bytes, ObjectInfo]:
    """`store.read(key, max_bytes)`, given up after `seconds`.

    The read runs in a daemon thread; one that does not finish in time (a hung network mount, a
    device that never answers: system calls no signal interrupts) is left behind, and the caller
    goes on.

    Raises:
        ReadDeadlineError: the read did not finish in time.
        StoreError: what the read raised.
    """
    done = threading.Event()
    outcome: list = []

    def run() -> None:
        try:
            outcome.append((True, store.read(key, max_bytes)))
        except BaseException as e:  # handed to the caller
            outcome.append((False, e))
        done.set()

    threading.Thread(target=run, daemon=True, name="fastsam-read-deadline").start()
    if not done.wait(seconds):
        raise ReadDeadlineError(
            f"{store.uri_of(key)}: not read within {seconds:g} s (storage.object_timeout_s); the store or file "
            "system is hanging: check it, or raise the limit"
        )
    ok, value = outcome[0]
    if not ok:
        raise value
    return value


def _local_error(path: Path, e: OSError, doing: str) -> StoreError:
    """A StoreError for a failed file operation, naming the file and the fix."""
    if isinstance(e, FileNotFoundError):
        return ObjectNotFoundError(f"{path} does not exist")
    if isinstance(e, IsADirectoryError):
        return StoreError(f"{path} is a folder, not an object")
    if isinstance(e, PermissionError) or e.errno == errno.EROFS:
        return StoreAccessError(f"cannot {doing} {path}: {e.strerror}; check the permissions of the folder")
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return StoreError(f"cannot {doing} {path}: {e.strerror}; free space on that disk, then run again to resume")
    return StoreError(f"cannot {doing} {path}: {e.strerror or e}")


#: S3 error codes of a conditional write that found the key taken (or a concurrent one in flight).
_CONDITION_FAILED = ("PreconditionFailed", "412", "ConditionalRequestConflict")

#: S3 error codes that repeat until someone changes credentials, permissions or names.
PERMANENT_CODES = {
    "AccessDenied": "check the credentials' permissions on this bucket and prefix",
    "AllAccessDisabled": "access to this bucket is disabled; check the bucket",
    "AccountProblem": "the account has a problem; check it with the storage provider",
    "ExpiredToken": "the session credentials expired; renew them",
    "InvalidAccessKeyId": "check the credentials in the environment or profile",
    "InvalidBucketName": "check the bucket name",
    "InvalidToken": "check the session token in the environment or profile",
    "NoSuchBucket": "check the bucket name and storage.endpoint_url",
    "PermanentRedirect": "the bucket is in another region; set storage.region",
    "AuthorizationHeaderMalformed": "the bucket is in another region; set storage.region",
    "SignatureDoesNotMatch": "check the credentials in the environment or profile",
    "403": "check the credentials and their permissions on this bucket and prefix",
}


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
        try:
            session = boto3.session.Session(profile_name=s.profile, region_name=s.region)
        except Exception as e:  # botocore's ProfileNotFound and friends
            raise StoreAccessError(f"{self.uri}: {e}; check storage.profile and ~/.aws/config") from None
        config = Config(
            retries={"mode": s.retry_mode, "max_attempts": s.max_attempts},
            connect_timeout=s.connect_timeout_s,
            read_timeout=s.read_timeout_s,
            max_pool_connections=max_pool_connections,
        )
        self.client = session.client("s3", endpoint_url=s.endpoint_url, config=config)

    def __reduce__(self):
        # boto3 clients do not pickle; a copy sent to another process makes its own client.
        return (S3Store, (self.uri, self.storage))

    def describe_error(self, key: str, e: Exception) -> StoreError:
        """A StoreError naming the object, the error code and the fix (never credentials).

        Permanent refusals become StoreAccessError; what botocore retried without success
        (timeouts, resets, 5xx, throttling) becomes StoreUnavailableError.
        """
        from botocore.exceptions import (
            ConnectionClosedError,
            ConnectTimeoutError,
            EndpointConnectionError,
            NoCredentialsError,
            ReadTimeoutError,
        )

        where = self.uri_of(key)
        if isinstance(e, NoCredentialsError):
            return StoreAccessError(
                f"{where}: no credentials found; set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, storage.profile or an "
                "instance role"
            )
        if isinstance(e, EndpointConnectionError | ConnectTimeoutError | ConnectionClosedError | ReadTimeoutError):
            endpoint = self.storage.endpoint_url or "the AWS endpoint"
            return StoreUnavailableError(
                f"{where}: cannot reach {endpoint} ({type(e).__name__}) after {self.storage.max_attempts} attempts; "
                "check storage.endpoint_url and the network"
            )
        response = getattr(e, "response", None) or {}
        code = str(response.get("Error", {}).get("Code", type(e).__name__))
        status = int(response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        if code in PERMANENT_CODES:
            return StoreAccessError(f"{where}: {code}; {PERMANENT_CODES[code]}")
        if status >= 500 or code in ("SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "503"):
            return StoreUnavailableError(
                f"{where}: {code} after {self.storage.max_attempts} attempts; the store is failing or throttling, "
                "try again later or raise storage.max_attempts"
            )
        return StoreError(f"{where}: {code}")

    @contextlib.contextmanager
    def _requests(self, key: str, missing: str | None = None) -> Iterator[None]:
        """Turn botocore's errors inside the block into StoreErrors naming `key` (see describe_error).

        Args:
            key: the object the requests are about, for messages.
            missing: the key to name in ObjectNotFoundError when the store answers NoSuchKey/404;
                None = that answer is an error like any other.
        """
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            yield
        except ClientError as e:
            if missing is not None and e.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NotFound"):
                raise ObjectNotFoundError(f"{self.uri_of(missing)} does not exist") from None
            raise self.describe_error(key, e) from None
        except BotoCoreError as e:
            raise self.describe_error(key, e) from None

    def list(self, prefix: str = "", skipped: list[str] | None = None) -> Iterator[ObjectInfo]:
        """See `ObjectStore.list` (a bucket has no part that cannot be listed: `skipped` stays as it is)."""
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self.prefix + prefix)
        with self._requests(prefix):
            for page in pages:
                for obj in page.get("Contents", ()):
                    key = obj["Key"][len(self.prefix) :]
                    if key and not obj["Key"].endswith("/"):
                        yield ObjectInfo(key, int(obj["Size"]), obj.get("ETag", "").strip('"') or None)

    def get(self, key: str, max_bytes: int | None = None) -> bytes:
        """See `ObjectStore.get`: the body is streamed and never read past `max_bytes`."""
        return self.read(key, max_bytes)[0]

    def read(self, key: str, max_bytes: int | None = None) -> tuple[bytes, ObjectInfo]:
        """See `ObjectStore.read`: size and ETag from the GET's own response.

        botocore retries a request until its headers arrive; a body cut short after that is not
        retried by botocore, so the whole GET is tried again here (storage.max_attempts in all).
        """
        attempts = self.storage.max_attempts
        for attempt in range(1, attempts + 1):
            try:
                return self._read_once(key, max_bytes)
            except _BodyCutShortError as e:
                if attempt == attempts:
                    raise StoreUnavailableError(
                        f"{self.uri_of(key)}: the download was cut short on all {attempts} attempts ({e}); "
                        "check the network or raise storage.max_attempts"
                    ) from None
                time.sleep(min(0.1 * 2**attempt, 5.0) * random.random())
        raise AssertionError("unreachable")

    def _read_once(self, key: str, max_bytes: int | None) -> tuple[bytes, ObjectInfo]:
        from botocore.exceptions import BotoCoreError, ClientError

        with self._requests(key, missing=key):
            resp = self.client.get_object(Bucket=self.bucket, Key=self.prefix + key)
        etag = resp.get("ETag", "").strip('"') or None
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
            data = buf.getvalue()
        except (ClientError, BotoCoreError) as e:
            raise _BodyCutShortError(type(e).__name__) from None
        finally:
            body.close()
        if size >= 0 and len(data) != size:  # a connection closed early without an error
            raise _BodyCutShortError(f"{len(data)} of {size} bytes")
        return data, ObjectInfo(key, len(data), etag)

    def tail(self, key: str, n: int) -> bytes:
        """See `ObjectStore.tail` (one ranged GET)."""
        with self._requests(key, missing=key):
            body = self.client.get_object(Bucket=self.bucket, Key=self.prefix + key, Range=f"bytes=-{n}")["Body"]
            try:
                return body.read()
            finally:
                body.close()

    def put(self, key: str, data: bytes) -> None:
        """See `ObjectStore.put`; multipart at or above storage.multipart_threshold bytes."""
        from boto3.s3.transfer import TransferConfig

        full = self.prefix + safe_key(key)
        with self._requests(key):
            if len(data) < self.storage.multipart_threshold:
                self.client.put_object(Bucket=self.bucket, Key=full, Body=data)
            else:
                cfg = TransferConfig(
                    multipart_threshold=self.storage.multipart_threshold,
                    multipart_chunksize=self.storage.multipart_threshold,
                )
                self.client.upload_fileobj(io.BytesIO(data), self.bucket, full, Config=cfg)

    def put_file(self, key: str, path: Path) -> None:
        """See `ObjectStore.put_file`: multipart from storage.multipart_threshold bytes."""
        from boto3.s3.transfer import TransferConfig

        t = self.storage.multipart_threshold
        with self._requests(key):
            self.client.upload_file(
                str(path),
                self.bucket,
                self.prefix + safe_key(key),
                Config=TransferConfig(multipart_threshold=t, multipart_chunksize=t),
            )

    def create(self, key: str, data: bytes) -> bool:
        """See `ObjectStore.create`: a conditional PUT (If-None-Match: *).

        A retried request whose first try did land finds its own bytes; that counts as created, so
        a lost response cannot make the writer believe it lost the race.
        """
        from botocore.exceptions import ClientError

        if len(data) >= self.storage.multipart_threshold:
            raise ValueError(f"create() writes small objects only, but got {len(data)} bytes for {key!r}")
        with self._requests(key):
            try:
                self.client.put_object(Bucket=self.bucket, Key=self.prefix + safe_key(key), Body=data, IfNoneMatch="*")
                return True
            except ClientError as e:
                if e.response.get("Error", {}).get("Code") not in _CONDITION_FAILED:
                    raise
        try:
            return self.get(key) == data
        except ObjectNotFoundError:  # a conflicting create that did not complete: the key is still free
            return self.create(key, data)

    def copy(self, src: str, dst: str) -> None:
        """See `ObjectStore.copy`: server-side, no bytes pass through this process."""
        with self._requests(dst, missing=src):
            self.client.copy(
                {"Bucket": self.bucket, "Key": self.prefix + src}, self.bucket, self.prefix + safe_key(dst)
            )

    def check_root(self) -> None:
        """See `ObjectStore.check_root`: one ListObjectsV2 request of one key."""
        with self._requests(""):
            self.client.list_objects_v2(Bucket=self.bucket, Prefix=self.prefix, MaxKeys=1)

    def head(self, key: str) -> ObjectInfo | None:
        """See `ObjectStore.head`."""
        try:
            with self._requests(key, missing=key):
                resp = self.client.head_object(Bucket=self.bucket, Key=self.prefix + key)
        except ObjectNotFoundError:
            return None
        return ObjectInfo(key, int(resp["ContentLength"]), resp.get("ETag", "").strip('"') or None)

    def delete(self, key: str) -> None:
        """See `ObjectStore.delete`."""
        with self._requests(key):
            self.client.delete_object(Bucket=self.bucket, Key=self.prefix + key)

    def uri_of(self, key: str) -> str:
        """s3://bucket/prefix/key (the key as stored, not percent-encoded)."""
        return f"s3://{self.bucket}/{self.prefix}{key}"


def open_store(uri: str, storage: StorageSpec | None = None) -> ObjectStore:
    """The store rooted at `uri`: S3Store for s3://, LocalStore for a path or file:// URI."""
    if uri.startswith("s3://"):
        return S3Store(uri, storage)
    return LocalStore(uri)


def check_writable(store: ObjectStore, key: str, what: str) -> None:
    """Prove `store` takes writes: create `key` exclusively, then delete it.

    Raises:
        StoreError: of the same kind as the store's, its message prefixed "{what} is not writable".
    """
    try:
        store.create(key, b"")
        store.delete(key)
    except StoreError as e:
        raise type(e)(f"{what} is not writable: {e}") from None


def display_key(key: str) -> str:
    """A key made safe to print on one line (control characters escaped)."""
    return key if key.isprintable() else key.encode("unicode_escape").decode("ascii")
