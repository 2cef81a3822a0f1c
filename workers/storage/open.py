"""The store a URI names."""

from __future__ import annotations

from schemas.job import StorageSpec
from schemas.uri import Uri
from workers.storage.base import ObjectStore
from workers.storage.local import LocalStore
from workers.storage.s3 import S3Store


def open_store(uri: str | Uri, storage: StorageSpec | None = None) -> ObjectStore:
    """The store rooted at `uri`: an S3Store for s3://, a LocalStore for a folder or file:// URI.

    Raises:
        UriError: not a URI we read.
    """
    where = Uri.parse(uri)
    return S3Store(where, storage) if where.is_s3 else LocalStore(where.folder)
