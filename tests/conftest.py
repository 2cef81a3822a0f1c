import numpy as np
import pytest

from tests.support.helpers import make_random_checkpoint


@pytest.fixture(scope="session")
def random_checkpoint(tmp_path_factory):
    """A one-class YOLOv8n-seg checkpoint with random weights that emits hundreds of masks."""
    return make_random_checkpoint(tmp_path_factory.mktemp("ckpt") / "random-seg.pt")


@pytest.fixture(scope="session")
def rng():
    return np.random.default_rng(1234)


@pytest.fixture(scope="session")
def five_scenes(tmp_path_factory):
    """A folder of five JPEG scenes (0.jpg .. 4.jpg) of the small model's world, shared by the session."""
    from tests.support.helpers import scene_bytes

    src = tmp_path_factory.mktemp("five-scenes")
    for i in range(5):
        (src / f"{i}.jpg").write_bytes(scene_bytes(i))
    return src


@pytest.fixture(scope="session")
def s3_endpoint():
    """A real S3 HTTP endpoint (moto) on 127.0.0.1, with fake credentials in the environment.

    The credentials are set for the whole session (before any Ray cluster starts, so its workers
    inherit them) and restored afterwards.
    """
    import logging
    import os

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise

    fake = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    saved = {k: os.environ.get(k) for k in fake}
    os.environ.update(fake)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture
def bucket(s3_endpoint, request):
    """A fresh, empty bucket on the loopback endpoint; its name."""
    import re

    import boto3

    name = re.sub(r"[^a-z0-9-]", "-", request.node.name.lower())[:50].strip("-") + "-b"
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    s3.create_bucket(Bucket=name)
    return name


@pytest.fixture(scope="module")
def prefect_harness():
    """Prefect's test harness: a temporary server and database for the module's flow runs."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory):
    """A Prefect server on 127.0.0.1 with its own home (SQLite database); its API URL and environment."""
    from tests.support.servers import prefect_server as start

    with start(tmp_path_factory.mktemp("prefect-home")) as server:
        yield server


def pytest_collection_modifyitems(config, items):
    """Run the tests that connect to an external Ray cluster before any test starts a local one.

    In Ray 2.60, a process that started a local cluster with `ray.init()` and shut it down cannot
    create actors after `ray.init(address=...)` to another cluster: they die at once, "all
    references to the actor were removed" (reproduced with a two-line actor). Connecting first and
    starting a local cluster afterwards works, so the order is fixed here, whatever order the test
    files are named in on the command line.
    """
    items.sort(key=lambda item: "two_nodes" not in getattr(item, "fixturenames", ()))
