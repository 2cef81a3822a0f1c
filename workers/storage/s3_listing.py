"""Listing a bucket prefix with several LIST requests in flight, with the result of one sequential listing.

A listing of 100 million keys is 100,000 LIST requests; one after another that is hours. Here the
prefix is split into its folders (S3 common prefixes under "/"), a level deeper while there are
fewer than two per request in flight (at most `MAX_DEPTH` levels), and the folders are listed at
once by a bounded pool, each into a bounded buffer of pages. They are read back in key order: the
keys of a folder sort after everything before the folder's name and before everything after it,
so folders and the objects beside them, taken in name order, are key order. Memory stays bounded
by `concurrency` x `BUFFER_PAGES` pages. A folder holding objects directly by the hundred thousand
is not split (its objects would have to be held); it is listed as one unit.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

#: Folder levels a listing is split into at most.
MAX_DEPTH = 3
#: Pages each folder's lister may hold ahead of the reader.
BUFFER_PAGES = 8
#: Objects directly in a folder beyond which it is not split.
MAX_DIRECT = 100_000
_DONE = object()


@dataclass
class _Unit:
    """A run of keys in order: objects already listed, or a folder to list whole."""

    name: str  # the first object's key, or the folder's prefix
    objects: list[dict] = field(default_factory=list)
    folder: str | None = None


def _after(name_or_key: str, start_after: str | None) -> bool:
    return start_after is None or name_or_key > start_after


def _split(client, bucket: str, folder: str) -> list[_Unit] | None:
    """The folder as units in key order (its objects and its subfolders), or None when it should not be split."""
    units: list[_Unit] = []
    direct = 0
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=folder, Delimiter="/")
    for page in pages:
        objects = page.get("Contents", ())
        prefixes = [p["Prefix"] for p in page.get("CommonPrefixes", ())]
        direct += len(objects)
        if direct > MAX_DIRECT or (not units and not prefixes and page.get("IsTruncated")):
            return None  # a flat folder: one sequential listing holds nothing in memory
        merged = sorted([(o["Key"], o) for o in objects] + [(p, None) for p in prefixes], key=lambda x: x[0])
        for name, obj in merged:
            if obj is not None:
                if units and units[-1].folder is None:
                    units[-1].objects.append(obj)
                else:
                    units.append(_Unit(name, [obj]))
            else:
                units.append(_Unit(name, folder=name))
    return units


def _plan(client, bucket: str, prefix: str, start_after: str | None, concurrency: int) -> list[_Unit]:
    """Units covering `prefix` in key order, folders split until there are enough to keep `concurrency` busy."""
    units = [_Unit(prefix, folder=prefix)]
    for _ in range(MAX_DEPTH):
        if sum(u.folder is not None for u in units) >= 2 * concurrency:
            break
        grown: list[_Unit] = []
        changed = False
        for u in units:
            if u.folder is None or not _reaches(u.folder, start_after):
                grown.append(u)
                continue
            parts = _split(client, bucket, u.folder)
            if parts is None:
                grown.append(u)
            else:
                grown += parts
                changed = True
        units = grown
        if not changed:
            break
    return units


def _reaches(folder: str, start_after: str | None) -> bool:
    """Whether the folder may hold keys after `start_after`."""
    return start_after is None or start_after.startswith(folder) or folder > start_after


def list_pages(client, bucket: str, prefix: str, start_after: str | None, concurrency: int) -> Iterator[list[dict]]:
    """Pages of S3 `Contents` entries under `prefix`, after `start_after`, in key order (see the module docstring).

    Raises:
        botocore's errors, from the request that met them, when the reader reaches it.
    """
    units = [u for u in _plan(client, bucket, prefix, start_after, concurrency) if u.folder is None
             or _reaches(u.folder, start_after)]  # fmt: skip
    stop = threading.Event()
    buffers: list[queue.Queue | None] = []

    def fill(folder: str, buf: queue.Queue) -> None:
        def put(item) -> bool:
            while not stop.is_set():
                try:
                    buf.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        try:
            kwargs = {"StartAfter": start_after} if start_after and start_after.startswith(folder) else {}
            for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=folder, **kwargs):
                if not put(page.get("Contents", [])):
                    return
        except Exception as e:  # the reader raises it in order
            put(e)
            return
        put(_DONE)

    with ThreadPoolExecutor(max(concurrency, 1), thread_name_prefix="fastsam-list") as pool:
        try:
            for u in units:
                if u.folder is None:
                    buffers.append(None)
                else:
                    buf: queue.Queue = queue.Queue(BUFFER_PAGES)
                    pool.submit(fill, u.folder, buf)
                    buffers.append(buf)
            for u, buf in zip(units, buffers, strict=True):
                if buf is None:
                    page = [o for o in u.objects if _after(o["Key"], start_after)]
                    if page:
                        yield page
                    continue
                while (item := buf.get()) is not _DONE:
                    if isinstance(item, Exception):
                        raise item
                    yield item
        finally:
            stop.set()
