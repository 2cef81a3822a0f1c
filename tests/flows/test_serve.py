"""`fastsam-label serve` against a real `prefect server start` on 127.0.0.1: a deployment run triggered
through the API completes, and the deployment carries its cron schedule."""

import subprocess
import sys
import time
import urllib.request

import yaml

from schemas import parse_job
from tests.support.helpers import scene_bytes
from tests.support.servers import stop


def test_served_deployment_runs_on_demand_and_has_its_cron(tmp_path, prefect_server):
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    url, env = prefect_server
    src = tmp_path / "src"
    src.mkdir()
    for i in range(4):
        (src / f"{i}.jpg").write_bytes(scene_bytes(i))
    job = parse_job(
        {
            "source": {"uri": str(src)},
            "output": str(tmp_path / "out"),
            "compute": {"shard_size": 2, "num_actors": 1, "cpus_per_actor": 1},
        },
        environ={},
    )
    job_file = tmp_path / "job.yaml"
    job_file.write_text(yaml.safe_dump(job.model_dump(mode="json")))
    serve_log = open(tmp_path / "serve.log", "wb")  # noqa: SIM115 - closed below
    serve = subprocess.Popen(
        [sys.executable, "-m", "flows.cli", "serve", str(job_file), "--cron", "0 3 * * *", "--name", "nightly"],
        env=env,
        stdout=serve_log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        with temporary_settings({PREFECT_API_URL: url}):
            deadline = time.monotonic() + 180
            with get_client(sync_client=True) as client:
                while True:
                    try:
                        deployment = client.read_deployment_by_name("label-collection/nightly")
                        break
                    except Exception:
                        assert serve.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
                        assert time.monotonic() < deadline, "the deployment never appeared"
                        time.sleep(1.0)
            assert [s.schedule.cron for s in deployment.schedules] == ["0 3 * * *"]
            flow_run = run_deployment("label-collection/nightly", timeout=600)
        assert flow_run.state.is_completed(), (flow_run.state, (tmp_path / "serve.log").read_text()[-3000:])
    finally:
        stop(serve)
        serve_log.close()
    runs = [p.parent.name for p in (tmp_path / "out/runs").glob("*/_SUCCESS")]
    assert len(runs) == 1
    images = list((tmp_path / "out/runs" / runs[0] / "images").glob("*.parquet"))
    assert len(images) == 2


def test_a_temporary_server_whose_port_was_taken_starts_on_another(monkeypatch):
    """Another process (a Ray port, a second run) may take the free port first; it answers garbage, not HTTP."""
    import socket
    import threading

    from flows import prefect_server

    squatter = socket.socket()
    squatter.bind(("127.0.0.1", 0))
    squatter.listen()
    taken = squatter.getsockname()[1]

    def answer_garbage() -> None:
        while True:
            try:
                conn, _ = squatter.accept()
            except OSError:
                return
            conn.sendall(b"\x00\x00\x12\x04\x00\xfe binary")
            conn.close()

    threading.Thread(target=answer_garbage, daemon=True).start()
    ports = [taken]
    real = prefect_server._free_port
    monkeypatch.setattr(prefect_server, "_free_port", lambda: ports.pop() if ports else real())
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    try:
        calls = []
        with prefect_server.temporary_server(while_starting=lambda: calls.append(1)) as url:
            assert calls == [1]  # once, though the first server process failed
            assert url is not None and f":{taken}/" not in url
            with urllib.request.urlopen(f"{url}/health", timeout=5) as r:
                assert r.status == 200
    finally:
        squatter.close()
    from prefect.settings import PREFECT_API_URL, temporary_settings

    calls = []
    with (
        temporary_settings(updates={PREFECT_API_URL: "http://127.0.0.1:9/api"}),  # configured: nothing starts
        prefect_server.temporary_server(while_starting=lambda: calls.append(1)) as url,
    ):
        assert url is None and calls == [1]
