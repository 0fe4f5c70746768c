"""Ray start-up, owned here alone: the commands enter `ray_cluster()` once; every component below them
(engine pool, judges, training launcher) only checks that Ray is up with `require_ray()`.

Also: wait until a cluster can take a job."""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from ipaddress import ip_address

from s3ft.config import RayConfig
from s3ft.errors import S3FTError
from s3ft.runtime.console import quiet_ray_logger, route_worker_output

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = float(os.environ.get("S3FT_CONNECT_TIMEOUT_S", "30"))  # a head that restarts takes seconds


@contextmanager
def ray_cluster(settings: RayConfig | None = None) -> Iterator[None]:
    """Ray for the length of a command: the running one, else the one RAY_ADDRESS names (`ray job submit`
    sets it), else a local one started with `settings`; stops only a cluster it started."""
    import ray

    started = not ray.is_initialized()
    if started:
        quiet_ray_logger()
        _start(settings or RayConfig())
        route_worker_output()
    try:
        yield
    finally:
        if started:
            ray.shutdown()


def require_ray() -> None:
    """Components use the cluster their command joined; they never start one with settings they do not know."""
    import ray

    if not ray.is_initialized():
        raise S3FTError("Ray is not running: the s3ft commands start it; in a script, wrap the call in "
                        "`with s3ft.runtime.cluster.ray_cluster(): ...`")


def state_api_available() -> bool:
    """Ray's State API (`ray.util.state`) is served by the dashboard: a cluster started without one has none."""
    from ray._private.services import get_webui_url_from_internal_kv

    return bool(get_webui_url_from_internal_kv())


def _start(settings: RayConfig) -> None:
    import ray

    address = os.environ.get("RAY_ADDRESS")
    if address:
        check_reachable(address)
        ray.init(address=address, log_to_driver=True, configure_logging=False)
        return
    if settings.dashboard and not _is_loopback(settings.dashboard_host):
        log.warning("ray.dashboard_host is %s: the dashboard and its job API (which runs code) are reachable "
                    "from the network", settings.dashboard_host)
    # A local cluster of our own: no dashboard unless asked, and then on loopback unless told otherwise.
    ray.init(include_dashboard=settings.dashboard, dashboard_host=settings.dashboard_host,
             dashboard_port=settings.dashboard_port, log_to_driver=True, configure_logging=False)


def check_reachable(address: str, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
    """Fail within `timeout_s` when nothing answers at a HOST:PORT Ray address: `ray.init` would retry
    for ever, saying only that it cannot connect. Other address forms (auto, ray://, http://) are left to Ray."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or "/" in address:
        return
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            socket.create_connection((host.strip("[]"), int(port)), timeout=5).close()
            return
        except OSError as exc:
            if time.monotonic() > deadline:
                raise S3FTError(
                    f"cannot reach the Ray head at {address} (RAY_ADDRESS) in {timeout_s:.0f} s: "
                    f"{exc.strerror or exc}. Is the cluster up (`ray status --address {address}`), and is that "
                    "port open from this machine? Unset RAY_ADDRESS to run on a local cluster of this machine."
                ) from None
            time.sleep(1)


def wait_for_cluster(address: str, nodes: int = 1, timeout_s: float = 300.0) -> None:
    """Block until `nodes` nodes are alive and the head's job agent has registered.

    `ray job submit` is refused ("No available agent") until the head's dashboard agent has written its
    address to the GCS, and the job API waits only 10 s for it: a cluster that answers `ray status`
    may not take a job yet. This reads the two GCS entries the job API itself reads (Ray 2.60)."""
    import ray
    from ray._private import ray_constants
    from ray.dashboard import consts as dashboard_consts
    from ray.experimental import internal_kv

    ray.init(address=address, logging_level=logging.ERROR, log_to_driver=False, configure_logging=False)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            alive = sum(1 for n in ray.nodes() if n["Alive"])
            head = internal_kv._internal_kv_get(ray_constants.KV_HEAD_NODE_ID_KEY,
                                                namespace=ray_constants.KV_NAMESPACE_JOB)
            agent = head and internal_kv._internal_kv_get(
                f"{dashboard_consts.DASHBOARD_AGENT_ADDR_NODE_ID_PREFIX}{head.decode()}",
                namespace=ray_constants.KV_NAMESPACE_DASHBOARD,
            )
            if alive >= nodes and agent:
                log.info("Ray cluster at %s ready: %d node(s), job agent at %s", address, alive, json.loads(agent)[:2])
                return
            if time.monotonic() > deadline:
                raise S3FTError(f"Ray cluster at {address} not ready after {timeout_s:.0f} s: {alive} of {nodes} "
                                f"node(s) alive, head job agent {'up' if agent else 'not registered'} (see the "
                                "head's dashboard_agent.log under its temp dir)")
            time.sleep(1)
    finally:
        ray.shutdown()


def _is_loopback(host: str) -> bool:
    try:
        return ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"
