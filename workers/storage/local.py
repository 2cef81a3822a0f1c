"""A local folder as an object store (workers.storage.base.ObjectStore)."""

from __future__ import annotations

import errno
import os
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from schemas.errors import (
    NotAFileError,
    ObjectNotFoundError,
    ObjectTooLargeError,
    StoreAccessError,
    StoreError,
    UnsafeKeyError,
)
from workers.storage.base import ObjectInfo, display_key
from workers.storage.keys import safe_key

_TMP_PREFIX = ".fastsam-tmp-"


def _local_info(key: str, st: os.stat_result) -> ObjectInfo:
    """A local file's listing entry; its ETag stand-in changes when its size or mtime does."""
    return ObjectInfo(key, st.st_size, f"{st.st_size}-{st.st_mtime_ns}")


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

    def list(
        self, prefix: str = "", skipped: list[str] | None = None, start_after: str | None = None
    ) -> Iterator[ObjectInfo]:
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
            if start_after is not None and key <= start_after:
                continue
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

    def download(self, key: str, path: Path) -> None:
        """See `ObjectStore.download` (a copy of the file)."""
        source = self._path(key)
        try:
            shutil.copyfile(source, path)
        except OSError as e:
            raise _local_error(source, e, "read") from None

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
