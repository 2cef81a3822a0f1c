"""One flow per run id: the lease in the output store."""

import subprocess
import threading
from datetime import UTC, datetime, timedelta

import pytest

from schemas import RunLayout
from schemas.errors import RunBusyError
from schemas.manifest import LeaseRecord
from workers.runs.lease import RunLease
from workers.storage import LocalStore

RUN = RunLayout("r")


def test_one_holder_at_a_time_and_release_frees_the_run(tmp_path):
    out = LocalStore(tmp_path)
    first = RunLease(out, RUN)
    first.acquire()
    with pytest.raises(RunBusyError, match=r"run r is being worked on by another flow \(.* pid \d+, since .*wait"):
        RunLease(out, RUN).acquire()
    first.release()
    second = RunLease(out, RUN)
    second.acquire()
    assert (first.generation, second.generation) == (0, 1)
    assert second.holder().owner == second._record.owner
    second.release()
    assert RunLease(out, RUN).holder().released


def test_flows_started_at_once_one_wins(tmp_path):
    out = LocalStore(tmp_path)
    barrier = threading.Barrier(8)
    outcomes: list[str] = []
    leases = [RunLease(out, RUN) for _ in range(8)]

    def take(lease: RunLease) -> None:
        barrier.wait()
        try:
            lease.acquire()
            outcomes.append("won")
        except RunBusyError:
            outcomes.append("refused")

    threads = [threading.Thread(target=take, args=(lease,)) for lease in leases]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["refused"] * 7 + ["won"]
    for lease in leases:
        lease.release()


def _write(out, generation: int, **fields) -> None:
    now = datetime.now(UTC)
    record = LeaseRecord(
        **{"owner": "x", "host": "other-host", "pid": 1, "acquired_at": now, "renewed_at": now, "ttl_s": 60.0, **fields}
    )
    out.put(RUN.lease(generation), record.model_dump_json().encode())


def test_a_stale_or_dead_holder_frees_the_run(tmp_path):
    import socket

    out = LocalStore(tmp_path)
    _write(out, 0, renewed_at=datetime.now(UTC) - timedelta(seconds=61))  # not renewed for ttl_s
    lease = RunLease(out, RUN)
    lease.acquire()
    assert lease.generation == 1
    lease.release()
    dead_pid = subprocess.Popen(["true"])
    dead_pid.wait()
    _write(out, 2, host=socket.gethostname(), pid=dead_pid.pid)  # its process on this host is gone
    lease = RunLease(out, RUN)
    lease.acquire()
    assert lease.generation == 3
    lease.release()
    _write(out, 4)  # alive as far as anyone can tell: another host, renewed just now
    with pytest.raises(RunBusyError):
        RunLease(out, RUN).acquire()


def test_a_holder_that_was_taken_over_stops(tmp_path):
    out = LocalStore(tmp_path)
    lease = RunLease(out, RUN, ttl_s=3600)
    lease.acquire()
    _write(out, 1, host="elsewhere")  # another flow took the run over
    lease.renew()
    assert lease.lost is not None and "another flow took run r over (elsewhere pid 1" in lease.lost
    lease.release()
    assert not LeaseRecord.model_validate_json(out.get(RUN.lease(0))).released  # a lost lease is left alone
