r"""Keys are data, never paths: the one check of a key that becomes a path, in a store or in an export.

A key in S3 is any string of up to 1,024 bytes: `in/x/../../../../tmp/pwn.jpg`, `a//x.jpg` and
`a\x.jpg` are all legal keys. `relative_path` refuses what a file system would read as something
else, and keeps the rest as it is:

- empty segments (`a//x.jpg`, a leading or trailing `/`), `.` and `..` segments;
- backslashes (a separator on Windows), control characters (NUL, line breaks, escapes);
- a name of more than `MAX_NAME_BYTES` bytes (file systems allow 255; exports add suffixes), or a
  key of more than `MAX_PATH_BYTES`.

Keys this project writes pass through `safe_key`; every file an export derives from a source key
(YOLO label and image files, CVAT's image folder, COCO `file_name`, Label Studio's local-file
paths) through `relative_path`, and an export leaves a refused object out and names it.
"""

from __future__ import annotations

from schemas.errors import UnsafeKeyError

#: Longest file or folder name taken from a key, in UTF-8 bytes (255 is the usual limit; exports
#: append suffixes such as "~1a2b3c4d" or ".txt").
MAX_NAME_BYTES = 200
#: Longest key turned into a path, in UTF-8 bytes.
MAX_PATH_BYTES = 1024


def relative_path(key: str) -> str:
    """The key as a relative POSIX path (the key itself: nothing is rewritten).

    Raises:
        UnsafeKeyError: the key has an empty, "." or ".." segment, a backslash, a control character,
            a name over MAX_NAME_BYTES or is longer than MAX_PATH_BYTES bytes.
    """
    if not key:
        raise UnsafeKeyError("the key is empty")
    if "\\" in key:
        raise UnsafeKeyError("it holds a backslash, a folder separator on Windows")
    if not key.isprintable():
        raise UnsafeKeyError("it holds control characters")
    if len(key.encode()) > MAX_PATH_BYTES:
        raise UnsafeKeyError(f"it is longer than {MAX_PATH_BYTES} bytes")
    for segment in key.split("/"):
        if segment in ("", ".", ".."):
            shown = "an empty folder name ('//' or a '/' at either end)" if not segment else f"a {segment!r} segment"
            raise UnsafeKeyError(f"it has {shown}")
        if len(segment.encode()) > MAX_NAME_BYTES:
            raise UnsafeKeyError(f"a name in it is longer than {MAX_NAME_BYTES} bytes")
    return key


def safe_key(*parts: str) -> str:
    """Join key segments with "/" into a key this project writes, refusing anything that could leave the root.

    Raises:
        UnsafeKeyError: "refusing object key ...: ..." (see `relative_path`).
    """
    key = "/".join(parts)
    try:
        return relative_path(key)
    except UnsafeKeyError as e:
        raise UnsafeKeyError(f"refusing object key {key!r}: {e}") from None
