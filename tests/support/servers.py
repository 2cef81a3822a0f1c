"""Servers the tests start on 127.0.0.1 and stop: free ports, process groups, Prefect, S3, Label Studio."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop(proc: subprocess.Popen) -> None:
    """Stop a process started with start_new_session=True, and its children: TERM, then KILL after 20 s."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@contextlib.contextmanager
def prefect_server(home: Path) -> Iterator[tuple[str, dict]]:
    """`prefect server start` on 127.0.0.1 with `home` as PREFECT_HOME; yields (API URL, environment for clients)."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false", PREFECT_UI_ENABLED="false")
    prefect = str(Path(sys.executable).parent / "prefect")
    with open(home / "server.log", "wb") as log:
        proc = subprocess.Popen(
            [prefect, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        url = f"http://127.0.0.1:{port}/api"
        try:
            deadline = time.monotonic() + 180
            while True:
                try:
                    if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"prefect server did not start: {(home / 'server.log').read_text()[-2000:]}")
                time.sleep(0.5)
            yield url, {**env, "PREFECT_API_URL": url}
        finally:
            stop(proc)


def loopback_s3(bucket: str):
    """A moto S3 endpoint on 127.0.0.1 holding one empty bucket: (server, endpoint URL, boto3 client).

    Any credentials are accepted; call `server.stop()` when done.
    """
    import logging

    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    endpoint = "http://{}:{}".format(*server.get_host_and_port())
    client = boto3.client("s3", endpoint_url=endpoint)
    client.create_bucket(Bucket=bucket)
    return server, endpoint, client


@contextlib.contextmanager
def label_studio(executable: Path, data: Path, document_root: Path) -> Iterator[dict]:
    """A real Label Studio on 127.0.0.1 (SQLite in `data`) serving local files under `document_root`.

    Yields {"url", "token", "email", "password"}: a legacy API token and the login of its one user.
    Label Studio also reads bare USERNAME/PASSWORD/PORT from the environment, so they are removed.
    """
    port = free_port()
    user = {
        "email": "reviewer@example.com",
        "password": "fastsam-" + os.urandom(6).hex(),
        "token": os.urandom(20).hex(),
    }
    env = {k: v for k, v in os.environ.items() if k not in ("USERNAME", "PASSWORD", "PORT", "HOST")}
    env.update(
        LABEL_STUDIO_USERNAME=user["email"],
        LABEL_STUDIO_PASSWORD=user["password"],
        LABEL_STUDIO_USER_TOKEN=user["token"],
        LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED="true",
        LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT=str(document_root),
        LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK="true",
        COLLECT_ANALYTICS="false",
    )
    cmd = [str(executable), "start", "--no-browser", "--internal-host", "127.0.0.1", "--port", str(port),
           "--data-dir", str(data), "--enable-legacy-api-token"]  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    with open(data.parent / "label-studio.log", "wb") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.monotonic() + 300
            while True:
                try:
                    headers = {"Authorization": f"Token {user['token']}"}
                    if httpx.get(f"{url}/api/projects", headers=headers, timeout=5).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if proc.poll() is not None or time.monotonic() > deadline:
                    tail = (data.parent / "label-studio.log").read_text(errors="replace")[-3000:]
                    raise RuntimeError(f"Label Studio did not start: {tail}")
                time.sleep(1)
            yield {"url": url, **user}
        finally:
            stop(proc)
