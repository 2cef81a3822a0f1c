"""An S3 (or S3-compatible) bucket and prefix as an object store, through boto3 (workers.storage.base.ObjectStore)."""

from __future__ import annotations

import contextlib
import io
import random
import time
from collections.abc import Iterator
from pathlib import Path

from schemas.errors import (
    ObjectNotFoundError,
    ObjectTooLargeError,
    StoreAccessError,
    StoreError,
    StoreUnavailableError,
    UriError,
)
from schemas.job import StorageSpec
from schemas.uri import Uri
from workers.storage.base import ObjectInfo
from workers.storage.keys import safe_key


class _BodyCutShortError(Exception):
    """A response body ended early or broke while streaming."""


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

    def __init__(self, uri: str | Uri, storage: StorageSpec | None = None, max_pool_connections: int = 16):
        import boto3
        from botocore.config import Config

        where = Uri.parse(uri)
        if not where.is_s3:
            raise UriError(f"expected an s3:// URI, but got {str(uri)!r}")
        self.bucket = where.bucket
        self.prefix = f"{where.path}/" if where.path else ""
        self.uri = f"s3://{self.bucket}/{self.prefix}"
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

    def list(
        self, prefix: str = "", skipped: list[str] | None = None, start_after: str | None = None
    ) -> Iterator[ObjectInfo]:
        """See `ObjectStore.list` (a bucket has no part that cannot be listed: `skipped` stays as it is).

        With `storage.list_concurrency` > 1 the prefix's folders are listed at once
        (workers.storage.s3_listing), with the same result.
        """
        after = self.prefix + start_after if start_after else None
        if self.storage.list_concurrency > 1:
            from workers.storage.s3_listing import list_pages

            pages = list_pages(self.client, self.bucket, self.prefix + prefix, after, self.storage.list_concurrency)
        else:
            kwargs = {"StartAfter": after} if after else {}
            pages = (page.get("Contents", ()) for page in self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=self.prefix + prefix, **kwargs))  # fmt: skip
        with self._requests(prefix):
            for page in pages:
                for obj in page:
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

    def download(self, key: str, path: Path) -> None:
        """See `ObjectStore.download` (boto3's managed transfer: ranged parts, retried)."""
        with self._requests(key, missing=key):
            self.client.download_file(self.bucket, self.prefix + key, str(path))

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
