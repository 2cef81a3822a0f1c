r"""Keys are data, never paths: the one mapping from a source object's key to a file inside an export.

A key in S3 is any string of up to 1,024 bytes: `in/x/../../../../tmp/pwn.jpg`, `a//x.jpg` and
`a\x.jpg` are all legal keys. Every file an export derives from a key (YOLO label and image files,
CVAT's image folder, COCO `file_name`, Label Studio's local-file paths) goes through
`relative_path`, which keeps the key's folders and refuses what a file system would read as
something else:

- empty segments (`a//x.jpg`, a leading or trailing `/`), `.` and `..` segments;
- backslashes (a separator on Windows), control characters (NUL, line breaks, escapes);
- a name of more than `MAX_NAME_BYTES` bytes (file systems allow 255; exports add suffixes), or a
  key of more than `MAX_PATH_BYTES`.

An export leaves a refused object out, counts it and names it in its manifest; it never writes it.

Two keys can still want one file: `a.jpg` and `a.png` want one YOLO label file `a.txt`; `A.jpg`
and `a.jpg` are one file on a case-insensitive file system (macOS, Windows), and `x.jpg` cannot be
a file and `x.jpg/y.png` need it to be a folder. `PathClaims` records which key holds each path
(case-folded) and each folder, on disk (SQLite), so memory does not grow with the export.
"""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import PurePosixPath

from schemas.errors import PathCollisionError, UnsafeKeyError

#: Longest file or folder name taken from a key, in UTF-8 bytes (255 is the usual limit; exports
#: append suffixes such as "~1a2b3c4d" or ".txt").
MAX_NAME_BYTES = 200
#: Longest key turned into a path, in UTF-8 bytes.
MAX_PATH_BYTES = 1024


def relative_path(key: str) -> str:
    """The key as a relative POSIX path inside an export (the key itself: nothing is rewritten).

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


def disambiguated(path: str, key: str) -> str:
    """`path` with a short digest of `key` before its extension: a.png -> a~1a2b3c4d.png.

    Used when another key took `path`; the digest depends on the key alone, so the name is the same
    in every export of the run.
    """
    p = PurePosixPath(path)
    digest = hashlib.blake2b(key.encode(), digest_size=4).hexdigest()
    return str(p.with_name(f"{p.stem}~{digest}{p.suffix}"))


class PathClaims:
    """Which key holds each file and folder of an export, compared ignoring case.

    Kept in an SQLite database on disk (the export's staging database), so an export of millions of
    images keeps its memory.
    """

    _FILE, _FOLDER = 0, 1

    def __init__(self, db: sqlite3.Connection):
        self._db = db
        self._db.execute("CREATE TABLE claims (path TEXT PRIMARY KEY, kind INTEGER NOT NULL, key TEXT NOT NULL)")

    def holder(self, path: str) -> str | None:
        """The key in the way of a file at `path`, or None when the path is free.

        In the way: a key holding the path, a folder at the path, or a file where one of its folders must be.
        """
        folded = PurePosixPath(path.casefold())
        row = self._db.execute("SELECT key FROM claims WHERE path = ?", (str(folded),)).fetchone()
        if row is not None:
            return row[0]
        for parent in folded.parents:
            if str(parent) == ".":
                break
            row = self._db.execute("SELECT kind, key FROM claims WHERE path = ?", (str(parent),)).fetchone()
            if row is not None and row[0] == self._FILE:
                return row[1]
        return None

    def claim(self, paths: list[str], key: str) -> None:
        """Record `key` as the holder of every file in `paths` (and their folders); they must be free."""
        for path in paths:
            folded = PurePosixPath(path.casefold())
            self._db.execute("INSERT INTO claims VALUES (?, ?, ?)", (str(folded), self._FILE, key))
            for parent in folded.parents:
                if str(parent) == ".":
                    break
                self._db.execute("INSERT OR IGNORE INTO claims VALUES (?, ?, ?)", (str(parent), self._FOLDER, key))

    def place(self, candidates: list[list[str]], key: str) -> int:
        """Claim the first set of paths that is wholly free; its index in `candidates`.

        Raises:
            PathCollisionError: every candidate is taken; the message names both keys.
        """
        other = None
        for i, paths in enumerate(candidates):
            holders = [h for p in paths if (h := self.holder(p)) is not None]
            if not holders:
                self.claim(paths, key)
                return i
            other = other or holders[0]
        raise PathCollisionError(
            f"{key!r} needs {candidates[0][0]} (or a folder of it), which {other!r} holds (names compared ignoring "
            "case); rename one of the two objects to export both"
        )
