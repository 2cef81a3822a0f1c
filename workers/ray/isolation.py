"""Finding the object that kills its actor: split a shard in halves until one object is left.

When actors die `compute.max_shard_attempts` times on one shard, an object in it is probably
killing them (memory, a crash in native code). `isolate` labels the shard's halves as parts
(nothing written), splits a range again where an actor dies, and records an object on which an
actor died twice as `worker_lost` (`rows.worker_lost_part`); the parts are committed as one
attempt, so the shard ends with every other object labelled.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from schemas.layout import RunLayout
from schemas.manifest import ShardSummary
from workers.runs import attempts
from workers.runs.parts import ShardPart, join_parts
from workers.runs.plan import read_shard_list
from workers.storage import ObjectInfo, ObjectStore

log = logging.getLogger(__name__)

#: Labels objects [start, stop) of a shard on some actor: (the part, None), or (None, why the actor died).
LabelRange = Callable[[int, int], tuple[ShardPart | None, BaseException | None]]
#: The part recording one object as lost.
LostPart = Callable[[ObjectInfo], ShardPart]


def isolate(output: ObjectStore, layout: RunLayout, shard_id: int, label: LabelRange, lost: LostPart) -> ShardSummary:
    """Label a shard by halves until the object that kills its actors is found; commit the parts as one attempt.

    Returns the summary that counts: this attempt's, or that of an attempt thought lost that finished.
    """
    t0 = time.perf_counter()
    done = attempts.read_marker(output, layout, shard_id)
    if done is not None:  # an attempt we thought lost did finish
        return done.summary
    objects = read_shard_list(output, layout, shard_id)
    n = len(objects)
    found = (
        [lost(objects[0])]
        if n == 1
        else _range(label, lost, objects, 0, n // 2) + _range(label, lost, objects, n // 2, n)
    )
    return attempts.commit_part(output, layout, shard_id, attempts.new_attempt_id(), join_parts(found), t0)


def _range(label: LabelRange, lost: LostPart, objects: list[ObjectInfo], start: int, stop: int) -> list[ShardPart]:
    """Parts covering objects [start, stop): one death splits a range, two deaths mark a single object lost."""
    for _ in range(2 if stop - start == 1 else 1):
        part, died = label(start, stop)
        if died is None:
            return [part]
        log.warning("objects %d-%d: actor lost: %s", start, stop - 1, died)
    if stop - start == 1:
        return [lost(objects[start])]
    mid = (start + stop) // 2
    return _range(label, lost, objects, start, mid) + _range(label, lost, objects, mid, stop)
