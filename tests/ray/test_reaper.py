"""The watchdog of a command-line run: what a run started goes when the run goes, however it ends."""

import os
import subprocess
import sys
import time
from pathlib import Path

from workers.ray import reaper


def _tagged_sleeper(tag: str) -> subprocess.Popen:
    env = {**os.environ, reaper.OWNER_ENV: tag}
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], env=env, start_new_session=True)


def test_watch_tags_children_and_reaps_them_when_the_block_ends():
    with reaper.watch() as tag:
        assert os.environ[reaper.OWNER_ENV] == tag and tag.startswith(f"{os.getpid()}.")
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True)
        folder = Path(reaper.new_folder("test-"))
        assert (folder / reaper.OWNER_FILE).read_text() == tag
        time.sleep(0.5)
        assert reaper.tagged(tag) == [child.pid]
    assert reaper.OWNER_ENV not in os.environ
    assert child.wait(timeout=20) == -15  # SIGTERM, from the watchdog
    assert _wait_gone(folder) and reaper.tagged(tag) == []


def _wait_gone(folder: Path) -> bool:
    deadline = time.monotonic() + 20
    while folder.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    return not folder.exists()


def test_orphans_of_a_run_whose_watchdog_died_too_are_reaped_at_the_next_start():
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    tag = f"{dead.pid}.0.deadbeef"  # its process is gone
    child = _tagged_sleeper(tag)
    folder = Path(reaper._folder_root()) / "fsl-test-orphan"
    folder.mkdir()
    (folder / reaper.OWNER_FILE).write_text(tag)
    alive = f"{os.getpid()}.{reaper._start_ticks(os.getpid())}.cafe"  # a run still going
    live = _tagged_sleeper(alive)
    ours = Path(reaper._folder_root()) / "fsl-test-live"
    ours.mkdir()
    (ours / reaper.OWNER_FILE).write_text(alive)
    time.sleep(0.5)
    try:
        reaper.reap_orphans()
        assert child.wait(timeout=10) == -15 and not folder.exists()
        assert live.poll() is None and ours.exists()  # a run still going is left alone
    finally:
        live.kill()
        child.kill()
        (ours / reaper.OWNER_FILE).unlink()
        ours.rmdir()
