"""File names inside an export: who holds each one, and a distinct name when two keys want one.

Keys become paths only through `workers.storage.keys.relative_path` (objects it refuses are left
out of every format). Two keys can still want one file: `a.jpg` and `a.png` want one YOLO label
file `a.txt`; `A.jpg` and `a.jpg` are one file on a case-insensitive file system (macOS, Windows);
`x.jpg` cannot be a file while `x.jpg/y.png` needs it to be a folder. `PathClaims` records which
key holds each path (case-folded) and each folder, on disk (SQLite), so memory does not grow with
the export; `disambiguated` gives a key a name of its own.
"""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import PurePosixPath

from schemas.errors import PathCollisionError


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
