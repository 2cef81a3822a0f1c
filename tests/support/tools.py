"""The real tools some tests drive: Debian's chromium, and review tools in their own virtual environments.

`make tools` installs Label Studio, Datumaro and FiftyOne each into `.tools/<name>/` beside the
project's pins (`make test` does it first; `.ci/run` runs `make test`). A test that needs a tool
that is missing skips with the command that installs it, except under CI=true, where it fails.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.support import ROOT

CHROMIUM = "/usr/bin/chromium"
TOOLS = ROOT / ".tools"
#: Chromium's flags for a headless browser that reaches nothing outside the machine.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]  # fmt: skip


def _missing(what: str, install: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{what} is missing; CI installs it ({install})")
    pytest.skip(f"needs {what}: {install}")


def chromium() -> str:
    """Debian's chromium."""
    if not Path(CHROMIUM).exists():
        _missing(f"Debian's chromium at {CHROMIUM}", "sudo apt-get install -y chromium; .ci/run does")
    return CHROMIUM


def tool(venv: str, command: str) -> Path:
    """A command of a tool's own virtual environment, e.g. tool("label-studio", "label-studio")."""
    path = TOOLS / venv / "bin" / command
    if not (TOOLS / venv / ".installed").exists() or not path.exists():
        _missing(f"{venv} in {TOOLS / venv}", "make tools")
    return path
