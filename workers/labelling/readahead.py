"""Reading ahead of the model with bounded memory: ordered read-ahead, a pixel budget, shape batches.

The reader threads fetch and decode images while the model works; what bounds their memory is the
number of decoded pixels in flight (`PixelBudget`), not a count of images, since one 100 MP image
weighs as much as a hundred 1 MP ones.
"""

from __future__ import annotations

import itertools
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def read_ahead(
    pool: Executor,
    fn: Callable[[int, T], R],
    items: Iterable[T],
    depth: int,
    on_wait: Callable[[int], None] | None = None,
) -> Iterator[R]:
    """fn(i, item) for each item, in order, computed up to `depth` items ahead in `pool`.

    `on_wait(i)` is called just before the consumer waits for item i (the head of the line).
    """
    it = enumerate(items)
    queue = deque((i, pool.submit(fn, i, x)) for i, x in itertools.islice(it, depth))
    while queue:
        i, fut = queue.popleft()
        nxt = next(it, None)
        if nxt is not None:
            queue.append((nxt[0], pool.submit(fn, *nxt)))
        if on_wait is not None:
            on_wait(i)
        yield fut.result()


class PixelBudget:
    """At most `pixels` decoded pixels in flight, shared by the reader threads of one actor.

    A reader reserves an image's pixels after reading its header and before decoding it, and the
    consumer releases them once the image is labelled. A reservation waits while the budget is
    spent, except for the image at the head of the line (the consumer is waiting for it, so it
    cannot wait for the consumer) and when nothing is reserved, so an image larger than the budget
    still goes through. Peak: `pixels` plus one image.
    """

    def __init__(self, pixels: int):
        if pixels < 1:
            raise ValueError(f"pixel budget must be >= 1, but got {pixels}")
        self.pixels = pixels
        self.used = 0
        self.peak = 0  # most pixels reserved at once (for tests and benchmarks)
        self._head = 0
        self._closed = False
        self._cond = threading.Condition()

    def head(self, seq: int) -> None:
        """The consumer now waits for item `seq`."""
        with self._cond:
            self._head = seq
            self._cond.notify_all()

    def hold(self, seq: int) -> PixelHold:
        """A reservation handle for item `seq` (nothing reserved yet)."""
        return PixelHold(self, seq)

    def close(self) -> None:
        """The consumer has stopped: let every waiting reader through (so its pool can shut down)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def _acquire(self, n: int, seq: int) -> None:
        with self._cond:
            while self.used and self.used + n > self.pixels and seq != self._head and not self._closed:
                self._cond.wait()
            self.used += n
            self.peak = max(self.peak, self.used)

    def _release(self, n: int) -> None:
        with self._cond:
            self.used -= n
            self._cond.notify_all()


class PixelHold:
    """The pixels reserved for one item: `take` once its size is known, `release` when done (idempotent)."""

    def __init__(self, budget: PixelBudget, seq: int):
        self.budget = budget
        self.seq = seq
        self.pixels = 0

    def take(self, pixels: int) -> None:
        """Reserve `pixels` (blocks while the budget is spent, see PixelBudget)."""
        if self.pixels:
            raise RuntimeError("this hold has already reserved its pixels")
        self.budget._acquire(pixels, self.seq)
        self.pixels = pixels

    def release(self) -> None:
        """Give the pixels back."""
        if self.pixels:
            self.budget._release(self.pixels)
            self.pixels = 0


class ShapeBatcher:
    """Groups items into model batches of images of one shape.

    Ultralytics letterboxes a batch of one shape to the smallest stride-multiple rectangle, but a
    batch of mixed shapes to a square, so an image's masks would depend on its batch neighbours.
    Batching only equal shapes makes every image's masks equal to labelling it alone (box scores
    may differ in the last float bits, about 1e-7, as convolution kernels sum a batch differently).
    """

    def __init__(self, batch_size: int, max_waiting: int):
        """Args: batch_size: items per batch; max_waiting: most items held back in partial batches."""
        self.batch_size = batch_size
        self.max_waiting = max(max_waiting, 1)
        self._groups: dict[tuple, list] = {}
        self._waiting = 0

    def add(self, item: T, shape: tuple) -> list[list[T]]:
        """Add an item; returns the batches that are ready (full, or the largest when too many wait)."""
        group = self._groups.setdefault(tuple(shape), [])
        group.append(item)
        self._waiting += 1
        if len(group) >= self.batch_size:
            return [self._pop(tuple(shape))]
        if self._waiting > self.max_waiting:
            return [self._pop(max(self._groups, key=lambda k: len(self._groups[k])))]
        return []

    def flush(self) -> list[list[T]]:
        """Every partial batch still waiting."""
        return [self._pop(k) for k in list(self._groups)]

    def _pop(self, key: tuple) -> list:
        group = self._groups.pop(key)
        self._waiting -= len(group)
        return group
