"""Where the Labeler actors run: an existing Ray cluster by address, or a private local one.

A private local cluster belongs to the process that starts it, and to nobody else:

- it is started with `address="local"`: a cluster found on the machine (`ray start`, another
  user's job) is never joined;
- every listener is on 127.0.0.1. Ray turns a loopback node address into the host's external
  address unless it is told the machine is a single-node cluster; with that, the GCS, raylet,
  workers, agents and metrics endpoints all bind loopback (a test lists the sockets);
- token authentication is on, with a fresh random token in a 0600 file inside a 0700 folder that
  also holds the session files and is removed at shutdown. `RAY_AUTH_MODE=disabled` in the
  environment is refused, not silently obeyed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import shutil
import threading
from collections.abc import Iterator

from schemas.errors import ClusterError, ClusterSettingError
from workers.ray import reaper

#: Ray's environment variables for authentication.
_AUTH_ENV = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")


def address_for(ray_address: str | None) -> str | None:
    """The cluster to join: the job's (operator-checked) address, else RAY_ADDRESS; None or "local" = private."""
    address = ray_address or os.environ.get("RAY_ADDRESS") or None
    return None if address == "local" else address


@contextlib.contextmanager
def connect(address: str | None) -> Iterator[bool]:
    """Ray for the duration of the block: the cluster at `address`, or a private local one when None.

    Yields whether the cluster is a private one this call started (its nodes are all it will ever
    have). When Ray is already initialised in this process (a caller's own cluster), it is used as
    it is and left running.
    """
    import ray

    if ray.is_initialized():
        yield False
        return
    if address is None:
        with private_cluster():
            yield True
        return
    try:
        ray.init(address=address, logging_level=logging.WARNING)
    except Exception as e:  # ConnectionError, TimeoutError, AuthenticationError, ...
        raise ClusterError(
            f"cannot reach the Ray cluster at {address}: {type(e).__name__}: {str(e).splitlines()[0]}; check "
            "compute.ray_address (or RAY_ADDRESS), that the cluster is up, and its auth token"
        ) from None
    try:
        yield False
    finally:
        ray.shutdown()


def unfit(cpus: float, gpus: float) -> str | None:
    """None when some live node of the cluster has `cpus` CPUs and `gpus` GPUs in all; else what the nodes have.

    Returns:
        e.g. "1 node: 127.0.0.1 with 2 CPUs and 0 GPUs".
    """
    import ray

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    have = [(n.get("NodeManagerAddress", "?"), n["Resources"].get("CPU", 0.0), n["Resources"].get("GPU", 0.0))
            for n in nodes]  # fmt: skip
    if any(c >= cpus and g >= gpus for _, c, g in have):
        return None
    shown = "; ".join(f"{ip} with {c:g} CPUs and {g:g} GPUs" for ip, c, g in have[:5])
    return f"{len(have)} node{'s' if len(have) != 1 else ''}: {shown}" if have else "no live node"


@contextlib.contextmanager
def private_cluster(num_cpus: int | None = None, runtime_env: dict | None = None) -> Iterator[str]:
    """Start a private local Ray cluster (see the module docstring); yields its GCS address.

    Args:
        num_cpus: CPUs the cluster offers; None = the machine's.
        runtime_env: Ray's runtime environment for every worker (environment variables, a
            `worker_process_setup_hook`); None = the driver's environment as it is.

    Raises:
        ClusterSettingError: RAY_AUTH_MODE asks for anything but token authentication.
    """
    import ray
    import ray._private.ray_constants as ray_constants
    from ray._raylet import AuthenticationTokenLoader, Config

    mode = os.environ.get("RAY_AUTH_MODE")
    if mode is not None and mode.strip().lower() != "token":
        raise ClusterSettingError(
            f"RAY_AUTH_MODE={mode} is set, but the private local Ray cluster always uses token authentication; "
            "unset RAY_AUTH_MODE, or run on a cluster of your own with --ray-address"
        )
    folder = reaper.new_folder("ray-")  # 0700; the run's watchdog removes it if this process dies
    token = os.path.join(folder, "auth_token")
    fd = os.open(token, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32))
    saved_env = {k: os.environ.get(k) for k in _AUTH_ENV}
    saved_cluster = ray_constants.ENABLE_RAY_CLUSTER
    os.environ.pop("RAY_AUTH_TOKEN", None)  # would take precedence over the token file
    os.environ.update({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": token})
    # Single-node: the loopback node address stays loopback (ray._private.services.get_node_ip_address).
    ray_constants.ENABLE_RAY_CLUSTER = False
    Config.initialize("")  # Ray reads RAY_AUTH_MODE into its config once; re-read it, as ray.init does
    AuthenticationTokenLoader.instance().reset_cache()
    if threading.current_thread() is not threading.main_thread():
        # Ray sets its SIGTERM handler (sys.exit) from the main thread only and warns otherwise;
        # the CLI, which starts the cluster in a thread, sets that handler itself.
        logging.getLogger("ray._private.worker").addFilter(_not_main_thread_warning)
    try:
        ctx = ray.init(
            address="local",
            num_cpus=num_cpus,
            runtime_env=runtime_env,
            include_dashboard=False,
            logging_level=logging.WARNING,
            _node_ip_address="127.0.0.1",
            _temp_dir=os.path.join(folder, "ray"),
        )
        yield ctx.address_info["gcs_address"]
    finally:
        ray.shutdown()
        ray_constants.ENABLE_RAY_CLUSTER = saved_cluster
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        Config.initialize("")
        AuthenticationTokenLoader.instance().reset_cache()
        shutil.rmtree(folder, ignore_errors=True)


def _not_main_thread_warning(record: logging.LogRecord) -> bool:
    """A logging filter: False for Ray's warning that a thread other than the main one started it."""
    return not str(record.msg).startswith("SIGTERM handler is not set because current thread is not the main")
