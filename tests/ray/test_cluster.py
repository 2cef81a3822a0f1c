"""A real two-node Ray cluster on this machine (`ray start --head` + `ray start --address`); one node dies."""

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest

from tests.support.ray_support import first_read, make_job, map_in_background, plan, read_table, upload_scenes
from tests.support.servers import free_port
from workers.ray.pool import LabelerPool

ray = pytest.importorskip("ray")


def _kill_tree(procs) -> None:
    victims = []
    for p in procs:
        try:
            victims += [p, *p.children(recursive=True)]
        except psutil.NoSuchProcess:
            continue
    for p in victims:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    psutil.wait_procs(victims, timeout=10)


def _processes(needle: str):
    out = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if any(needle in part for part in p.info["cmdline"] or ()):
                out.append(p)
        except psutil.NoSuchProcess:
            continue
    return out


def _nodes_when_ready(actors, timeout_s: float = 180.0) -> list[str]:
    from ray.exceptions import ActorDiedError, ActorUnavailableError

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return ray.get([a.node.remote() for a in actors], timeout=timeout_s)
        except (ActorUnavailableError, ActorDiedError):  # still restarting
            if time.monotonic() > deadline:
                raise
            time.sleep(1.0)


@pytest.fixture(scope="module")
def two_nodes(s3_endpoint):
    """Head (4 CPUs) and worker (2 CPUs) raylets on 127.0.0.1; killed and removed afterwards."""
    if ray.is_initialized():
        ray.shutdown()
    temp = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # short: Ray's socket paths live under it
    port, worker_port = free_port(), free_port()
    env = {
        **os.environ,  # the S3 fixture's fake credentials reach the actors through the raylets
        "RAY_health_check_period_ms": "1000",
        "RAY_health_check_failure_threshold": "3",
        "RAY_AUTH_MODE": "disabled",  # loopback only; every process of this cluster must agree
    }
    saved_auth = os.environ.get("RAY_AUTH_MODE")
    os.environ["RAY_AUTH_MODE"] = "disabled"  # for this process, the driver
    ray_cli = str(Path(sys.executable).parent / "ray")
    common = ["--node-ip-address=127.0.0.1", "--disable-usage-stats"]
    head = [ray_cli, "start", "--head", f"--port={port}", "--num-cpus=4", "--include-dashboard=false"]
    head.append(f"--temp-dir={temp}")
    worker = [ray_cli, "start", f"--address=127.0.0.1:{port}", "--num-cpus=2", f"--node-manager-port={worker_port}"]
    try:
        for cmd in (head + common, worker + common):
            done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
            assert done.returncode == 0, f"{' '.join(cmd)}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        yield f"127.0.0.1:{port}", worker_port
    finally:
        if ray.is_initialized():
            ray.shutdown()
        _kill_tree(_processes(temp) + _processes(f"127.0.0.1:{port}"))
        shutil.rmtree(temp, ignore_errors=True)
        if saved_auth is None:
            os.environ.pop("RAY_AUTH_MODE", None)
        else:
            os.environ["RAY_AUTH_MODE"] = saved_auth


def test_a_node_killed_mid_run_loses_and_duplicates_nothing(s3_endpoint, two_nodes, caplog):
    import boto3

    address, worker_port = two_nodes
    bucket = "cluster-src"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=bucket)
    keys = upload_scenes(s3_endpoint, bucket, 24)
    job = make_job(s3_endpoint, bucket, "out", shard_size=2, num_actors=2, cpus_per_actor=2, ray_address=address)
    n = plan(job, "node-kill")
    assert n == 12
    with LabelerPool(job) as pool:
        assert len(ray.nodes()) == 2
        ray.get([a.ready.remote() for a in pool._actors])
        assert len(set(ray.get([a.node.remote() for a in pool._actors]))) == 2  # one actor per node
        with first_read(f"{bucket}/src/") as reading:
            thread, results = map_in_background(pool, "node-kill", n)
            assert reading.wait(timeout=120)
            raylet = _processes(f"--node_manager_port={worker_port}")
            assert len(raylet) == 1
            _kill_tree(raylet)  # the worker node dies with its actor mid-shard
            thread.join(timeout=600)
            assert not thread.is_alive()
        # The lost actor was restarted on the surviving node and is ready for work again.
        head = ray.get_runtime_context().get_node_id()
        assert _nodes_when_ready(pool._actors) == [head, head]
        assert [node["Alive"] for node in ray.nodes() if node["NodeID"] != head] == [False]
    assert sorted(results) == list(range(n))
    assert all(not isinstance(r, Exception) for r in results.values()), results
    assert pool.redispatched >= 1
    images = read_table(job, "node-kill", "images").to_pylist()
    assert sorted(r["key"] for r in images) == sorted(k.removeprefix("src/") for k in keys)  # every object once
    assert all(r["status"] == "ok" for r in images)
