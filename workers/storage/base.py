"""Object storage, the interface: what the pipeline needs from a store, and what every store shares.

A store is rooted at a URI (s3://bucket/prefix or a folder; `schemas.uri.Uri`); keys are relative
to that root and use "/" separators. Readers never see a half-written object: an S3 PUT (or
completed multipart upload) is atomic, and the local store writes a temporary file in the same
folder and renames it. Keys this project writes are checked by `keys.safe_key`, so no source key
can steer an output outside the output prefix.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from schemas.errors import ReadDeadlineError, StoreError


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

    def list(
        self, prefix: str = "", skipped: list[str] | None = None, start_after: str | None = None
    ) -> Iterator[ObjectInfo]:
        """Every object whose key starts with `prefix` (and sorts after `start_after`), in key order, page by page.

        Key order is the order of the keys' UTF-8 bytes (S3's); `start_after` resumes a listing after
        the last key seen.

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

    def download(self, key: str, path: Path) -> None:
        """Write the object to a local file, streamed (not read into memory). Raises ObjectNotFoundError."""
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
