"""Nothing a command-line run starts outlives it, however the run ends (SIGKILL and out-of-memory included).

`watch()` tags the run: `FASTSAM_LABEL_OWNER=<tag>` goes into the environment, so every process
started from here on carries it (Prefect's server; Ray's GCS, raylet, dashboard and runtime-env
agents and workers), and folders the run creates (Ray's session and token folder) get an owner
file (`new_folder`). It then starts a watchdog: a small process in its own session that reads a pipe
from the run. When the pipe closes (the run ended, whichever way), the watchdog sends SIGTERM to
every process whose environment carries the tag, SIGKILL to those still there after a grace
period, and removes the marked folders. A watchdog that was killed too (a whole process group
killed at once) is covered at the next start: `reap_orphans` cleans up after every tag whose run
process is gone.

Linux only (it reads /proc); elsewhere `watch()` does nothing.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

#: The environment variable that tags a run's processes.
OWNER_ENV = "FASTSAM_LABEL_OWNER"
#: The file that tags a run's folders (its content: the tag).
OWNER_FILE = ".fastsam-owner"
#: The prefix of the folders runs make (`new_folder`).
FOLDER_PREFIX = "fsl-"
#: Seconds between SIGTERM and SIGKILL.
GRACE_S = 3.0


def _proc() -> Path | None:
    return Path("/proc") if Path("/proc/self/stat").exists() else None


def _start_ticks(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (with its pid, it names one process for ever)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def new_tag() -> str:
    """A tag naming this process: "pid.start-ticks.random"."""
    return f"{os.getpid()}.{_start_ticks(os.getpid())}.{secrets.token_hex(4)}"


def _owner_alive(tag: str) -> bool:
    pid, ticks = [*tag.split("."), "", ""][:2]
    return pid.isdigit() and _start_ticks(int(pid)) == ticks


def _folder_root() -> str:
    """Where runs make their folders: /tmp when there is one (Ray's socket paths must stay short)."""
    return "/tmp" if os.path.isdir("/tmp") else tempfile.gettempdir()


def new_folder(name: str) -> str:
    """A new private (0700) folder "fsl-{name}XXXX", tagged for the run's watchdog when the run is watched."""
    folder = tempfile.mkdtemp(prefix=f"{FOLDER_PREFIX}{name}", dir=_folder_root())
    tag = os.environ.get(OWNER_ENV)
    if tag:
        Path(folder, OWNER_FILE).write_text(tag)
    return folder


def tagged(tag: str) -> list[int]:
    """Pids of the processes whose environment carries the tag (this process excluded)."""
    proc, me, found = _proc(), os.getpid(), []
    needle = f"{OWNER_ENV}={tag}".encode()
    for entry in proc.iterdir() if proc is not None else ():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            env = (entry / "environ").read_bytes()
        except OSError:  # gone, or not ours to read
            continue
        if needle in env.split(b"\0"):
            found.append(int(entry.name))
    return found


def reap(tag: str, grace_s: float = GRACE_S) -> int:
    """Stop every process carrying `tag` and remove its folders; the number of processes signalled."""
    pids = tagged(tag)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while pids and time.monotonic() < deadline:
        time.sleep(0.1)
        pids = tagged(tag)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    for folder in Path(_folder_root()).glob(f"{FOLDER_PREFIX}*"):
        with contextlib.suppress(OSError):
            if (folder / OWNER_FILE).read_text() == tag:
                shutil.rmtree(folder, ignore_errors=True)
    return len(pids)


def reap_orphans() -> None:
    """Clean up after earlier runs whose process and watchdog are both gone (their tags, from marked folders)."""
    if _proc() is None:
        return
    for folder in Path(_folder_root()).glob(f"{FOLDER_PREFIX}*"):
        try:
            tag = (folder / OWNER_FILE).read_text()
        except OSError:
            continue
        if not _owner_alive(tag):
            reap(tag, grace_s=1.0)


@contextlib.contextmanager
def watch() -> Iterator[str | None]:
    """Tag this run and start its watchdog for the block (see the module docstring); yields the tag.

    At the end of the block the watchdog reaps what is left (processes still stopping included) and
    the environment is restored, so what this process starts afterwards is not tagged.
    """
    if _proc() is None:
        yield None
        return
    reap_orphans()
    tag = new_tag()
    saved = os.environ.get(OWNER_ENV)
    os.environ[OWNER_ENV] = tag
    watchdog = subprocess.Popen(
        [sys.executable, "-m", __name__, tag],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        start_new_session=True,  # a signal to the run's process group does not reach it
        env={k: v for k, v in os.environ.items() if k != OWNER_ENV},  # it must not reap itself
    )
    try:
        yield tag
    finally:
        watchdog.stdin.close()  # the watchdog reaps now; a run that dies closes it the same way
        if saved is None:
            os.environ.pop(OWNER_ENV, None)
        else:
            os.environ[OWNER_ENV] = saved


def _watchdog(tag: str) -> None:
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    with contextlib.suppress(OSError):
        while sys.stdin.buffer.read(4096):  # returns b"" once every writer is gone
            pass
    reap(tag)


if __name__ == "__main__":
    _watchdog(sys.argv[1])
