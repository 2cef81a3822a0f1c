"""Where data lives, parsed once: an s3:// URI or a local folder, as one value.

    Uri.parse("s3://bucket/images/")  -> Uri(scheme="s3", bucket="bucket", path="images")
    Uri.parse("./photos")             -> Uri(scheme="file", bucket="", path="/abs/photos")
    Uri.parse("file:///data/x")       -> Uri(scheme="file", bucket="", path="/data/x")

`str(uri)` is its one spelling (s3://bucket/prefix without a trailing slash; an absolute,
resolved path), so two spellings of one place compare equal. `join(key)` names an object under it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from schemas.errors import UriError


@dataclass(frozen=True)
class Uri:
    """An object-store prefix or a local folder.

    Attributes:
        scheme: "s3" or "file".
        bucket: the S3 bucket ("" for local folders).
        path: the key prefix under the bucket, without slashes at either end (s3), or the
            absolute, resolved folder path (file).
    """

    scheme: Literal["s3", "file"]
    bucket: str
    path: str

    @classmethod
    def parse(cls, text: str | Uri) -> Uri:
        """Parse "s3://bucket/prefix", "file:///path", or a local path (relative paths resolve now).

        Raises:
            UriError: another scheme (gs://, http://), or an s3:// URI without a bucket.
        """
        if isinstance(text, Uri):
            return text
        if text.startswith("s3://"):
            bucket, _, rest = text[5:].partition("/")
            if not bucket:
                raise UriError(f"{text!r} has no bucket; write s3://BUCKET/PREFIX")
            return cls("s3", bucket, rest.strip("/"))
        if "://" in text and not text.startswith("file://"):
            scheme = text.split("://", 1)[0]
            raise UriError(f"{text!r} uses scheme {scheme}://, which is not supported; use s3:// or a local path")
        return cls("file", "", str(Path(text.removeprefix("file://")).expanduser().resolve()))

    @property
    def is_s3(self) -> bool:
        """Whether this names S3 (or an S3-compatible store)."""
        return self.scheme == "s3"

    @property
    def folder(self) -> Path:
        """The local folder (file URIs only)."""
        if self.is_s3:
            raise UriError(f"{self} is not a local folder")
        return Path(self.path)

    def join(self, key: str) -> str:
        """The URI of object `key` under this prefix (s3://bucket/prefix/key, or /folder/key)."""
        if self.is_s3:
            return f"s3://{self.bucket}/{self.path}/{key}" if self.path else f"s3://{self.bucket}/{key}"
        return str(Path(self.path) / key)

    def __str__(self) -> str:
        if self.is_s3:
            return f"s3://{self.bucket}/{self.path}" if self.path else f"s3://{self.bucket}"
        return self.path
