"""Prefect's temporary API server for one CLI run, started without importing the server here.

Without `PREFECT_API_URL`, Prefect starts the same server (uvicorn running
`prefect.server.api.server:create_app` on 127.0.0.1) at a flow's first API call, but to do so it
imports the whole server stack into the calling process first: about 3 s of CPU before the
server process even starts. Started here, the process comes up while the CLI checks the job and
Ray starts, and the CLI never imports the server.
"""

from __future__ import annotations

import contextlib
import fcntl
import http.client
import logging
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

from schemas.errors import PrefectServerError

#: Ports tried for the temporary server (another process may take a free port before the server binds it).
_PORT_TRIES = 3


def _free_port() -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def temporary_server(timeout_s: float = 60.0, while_starting: Callable[[], None] | None = None) -> Iterator[str | None]:
    """A Prefect API server on 127.0.0.1 for the block, when none is configured; yields its API URL.

    The server process starts at once; the URL is yielded after it answers /api/health, with
    `PREFECT_API_URL` set to it for the block. With an API already configured (`PREFECT_API_URL`,
    or ephemeral servers disabled) nothing starts and None is yielded.

    Args:
        timeout_s: how long the server may take to answer.
        while_starting: work for this thread while the first server process starts (imports),
            called once, before the health check (or at once when nothing starts).

    Raises:
        PrefectServerError: the server exited or did not answer within `timeout_s`.
    """
    from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_EPHEMERAL_ENABLED, temporary_settings

    if PREFECT_API_URL.value() or not PREFECT_SERVER_EPHEMERAL_ENABLED.value():
        if while_starting is not None:
            while_starting()
        yield None
        return
    with _startup_lock():  # two servers migrating one new database at once break it (no such table ...)
        for attempt in range(1, _PORT_TRIES + 1):
            port = _free_port()
            proc = _start(port)
            url = f"http://127.0.0.1:{port}/api"
            try:
                if while_starting is not None:
                    while_starting, work = None, while_starting
                    work()
                _wait_healthy(proc, url, timeout_s)
                break
            except PrefectServerError:
                _stop(proc)
                if proc.returncode is None or attempt == _PORT_TRIES:
                    raise
                # it exited: most likely another process took the free port first (Ray's, a second run's)
            except BaseException:
                _stop(proc)
                raise
    try:
        with temporary_settings(updates={PREFECT_API_URL: url}):
            try:
                yield url
            finally:
                _drain_prefect()  # what the run sent to the server gets there while the server is up
    finally:
        _stop(proc)


def _start(port: int) -> subprocess.Popen:
    """The server process (uvicorn with Prefect's app factory) on 127.0.0.1:`port`."""
    import prefect
    from prefect.settings import get_current_settings

    env = {
        **os.environ,
        "PREFECT_UI_ENABLED": "0",
        "PREFECT__SERVER_EPHEMERAL": "1",
        "PREFECT__SERVER_FINAL": "1",
        **get_current_settings().to_environment_variables(exclude_unset=True),
    }
    cmd = [sys.executable, "-m", "uvicorn", "--app-dir", str(prefect.__module_path__.parent), "--factory",
           "prefect.server.api.server:create_app", "--host", "127.0.0.1", "--port", str(port),
           "--log-level", "error", "--lifespan", "on"]  # fmt: skip
    return subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL)


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextlib.contextmanager
def _startup_lock() -> Iterator[None]:
    """Hold an exclusive lock beside Prefect's database while a server starts (and creates or migrates it).

    Temporary servers of concurrent runs share PREFECT_HOME's SQLite database; once it exists they
    share it well, but two first starts racing to create its tables fail.
    """
    from prefect.settings import PREFECT_HOME

    home = Path(PREFECT_HOME.value()).expanduser()
    home.mkdir(parents=True, exist_ok=True)
    with open(home / ".fastsam-label-server-start.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _drain_prefect(timeout_s: float = 10.0) -> None:
    """Send Prefect's queued events and logs now (else its exit hooks retry a stopped server for a minute)."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for service in (APILogWorker, EventsWorker):
        with contextlib.suppress(Exception):
            service.drain_all(timeout=timeout_s, at_exit=False)


def _wait_healthy(proc: subprocess.Popen, url: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise PrefectServerError(
                f"the temporary Prefect server exited with code {proc.returncode}; run with --debug, or set "
                "PREFECT_API_URL to a Prefect server of your own"
            )
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=1) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError, http.client.HTTPException):  # not up yet, or not HTTP (not ours)
            pass
        time.sleep(0.1)
    raise PrefectServerError(
        f"the temporary Prefect server did not answer within {timeout_s:.0f} s; set PREFECT_API_URL to a Prefect "
        "server of your own"
    )


def offline() -> None:
    """Settings for the temporary Prefect server a CLI run starts: no telemetry to the internet."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


class _OneLineErrors(logging.Filter):
    """Drops Prefect's error records of failed flow and task runs.

    Their exception, with its traceback, reaches the CLI, which says it once, in one line (`--debug`
    keeps them).
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return not (
            record.levelno >= logging.ERROR and record.name.startswith(("prefect.flow_runs", "prefect.task_runs"))
        )


def quiet_logs() -> None:
    """Keep Prefect's console from printing the tracebacks of failed runs the CLI explains in one line."""
    from prefect.logging.configuration import setup_logging
    from prefect.logging.handlers import PrefectConsoleHandler

    setup_logging()  # Prefect's handlers exist from here on (it would set them up at the first run)
    for handler in logging.getLogger().handlers:  # its console handler is the root logger's
        if isinstance(handler, PrefectConsoleHandler) and not any(
            isinstance(f, _OneLineErrors) for f in handler.filters
        ):
            handler.addFilter(_OneLineErrors())
