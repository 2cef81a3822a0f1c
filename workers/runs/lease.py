"""One flow per run id: a lease in the output store, taken before planning and renewed while the run works.

    runs/{run_id}/lease/{generation:06d}.json    LeaseRecord as JSON

The highest generation holds the run. A flow takes the run by creating the next generation
exclusively, so of two flows started at once exactly one gets it and the other is refused, naming
the holder. A lease is free once released, once its holder has not renewed it for `ttl_s`, or at
once when its holder was a process on this host that no longer exists (a killed `fastsam-label run`
can be resumed right away). A holder that finds a newer generation has lost the run and stops.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from datetime import UTC, datetime, timedelta

from schemas.errors import ObjectNotFoundError, RunBusyError, StoreError
from schemas.layout import RunLayout
from schemas.manifest import LeaseRecord
from workers.storage import ObjectStore

log = logging.getLogger(__name__)


class RunLease:
    """The lease of one run, held by this process from `acquire` to `release`.

    Args:
        output: the job's output store.
        layout: the run.
        ttl_s: how long the lease outlives its last renewal; it is renewed every ttl_s / 4.
    """

    def __init__(self, output: ObjectStore, layout: RunLayout, ttl_s: float = 60.0):
        self.output = output
        self.layout = layout
        self.ttl_s = ttl_s
        self.generation: int | None = None
        self.lost: str | None = None  # why the lease was lost, once it is
        self._record: LeaseRecord | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _latest(self) -> tuple[int, LeaseRecord] | None:
        keys = (o.key for o in self.output.list(self.layout.lease_prefix))
        generations = [g for k in keys if (g := RunLayout.lease_generation(k)) is not None]
        for g in sorted(generations, reverse=True):
            try:
                return g, LeaseRecord.model_validate_json(self.output.get(self.layout.lease(g)))
            except ObjectNotFoundError:
                continue
        return None

    def holder(self) -> LeaseRecord | None:
        """The record of the latest lease of the run, or None when it never had one."""
        latest = self._latest()
        return latest[1] if latest is not None else None

    def acquire(self) -> None:
        """Take the run, or raise RunBusyError naming the flow that holds it."""
        now = datetime.now(UTC)
        latest = self._latest()
        run = self.layout.run_id
        if latest is not None and not latest[1].free(now):
            holder = latest[1]
            expires = holder.renewed_at + timedelta(seconds=holder.ttl_s)
            raise RunBusyError(
                f"run {run} is being worked on by another flow ({holder.describe()}); wait for it to finish, "
                f"or if it died, run again after {expires:%H:%M:%S} UTC when its lease expires"
            )
        generation = 0 if latest is None else latest[0] + 1
        record = LeaseRecord(
            owner=os.urandom(8).hex(),
            host=socket.gethostname(),
            pid=os.getpid(),
            acquired_at=now,
            renewed_at=now,
            ttl_s=self.ttl_s,
        )
        if not self.output.create(self.layout.lease(generation), record.model_dump_json().encode()):
            raise RunBusyError(f"run {run} was taken by another flow started at the same time; wait for it to finish")
        self.generation, self._record = generation, record
        self._thread = threading.Thread(target=self._renew_loop, daemon=True, name="fastsam-lease")
        self._thread.start()

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.ttl_s / 4):
            try:
                self.renew()
            except StoreError as e:  # a blip: the next renewal may pass; the lease lasts ttl_s
                log.warning("run %s: could not renew the lease: %s", self.layout.run_id, e)

    def renew(self) -> None:
        """Push the lease's expiry forward, unless another flow has taken the run."""
        latest = self._latest()
        if latest is not None and latest[0] != self.generation:
            self.lost = f"another flow took run {self.layout.run_id} over ({latest[1].describe()})"
            self._stop.set()
            return
        self._write(renewed_at=datetime.now(UTC))

    def _write(self, **update) -> None:
        self._record = self._record.model_copy(update=update)
        self.output.put(self.layout.lease(self.generation), self._record.model_dump_json().encode())

    def release(self) -> None:
        """Stop renewing and mark the lease released (no-op when it was not acquired or was lost)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self._record is not None and self.lost is None:
            self._write(released=True, renewed_at=datetime.now(UTC))
        self._record = None

    def __enter__(self) -> RunLease:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
