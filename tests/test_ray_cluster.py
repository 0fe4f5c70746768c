"""The local Ray cluster s3ft starts: its dashboard stays on loopback unless the config says otherwise;
and `s3ft wait-cluster` says what a cluster that cannot take a job yet is missing."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from s3ft.config import RayConfig
from s3ft.runtime.ports import free_port

# Start s3ft's local cluster with the dashboard on, then list who listens on the dashboard's port.
LISTENERS = """
import json, sys, psutil, ray
from s3ft.config import RayConfig
from s3ft.runtime.cluster import ray_cluster
with ray_cluster(RayConfig.model_validate_json(sys.argv[1])):
    port = json.loads(sys.argv[1])["dashboard_port"]
    hosts = sorted({c.laddr.ip for c in psutil.net_connections("tcp") if c.status == "LISTEN" and c.laddr.port == port})
print(json.dumps(hosts), ray.is_initialized())
"""


def dashboard_listeners(settings: RayConfig) -> list[str]:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    out = subprocess.run([sys.executable, "-c", LISTENERS, settings.model_dump_json()], env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    hosts, still_up = out.stdout.strip().splitlines()[-1].rsplit(" ", 1)
    assert still_up == "False"  # the command's cluster is stopped when it ends
    return json.loads(hosts)


def test_the_dashboard_is_off_by_default_and_on_loopback_when_asked() -> None:
    assert not RayConfig().dashboard
    port = free_port()
    assert dashboard_listeners(RayConfig(dashboard=True, dashboard_port=port)) == ["127.0.0.1"]


@pytest.mark.slow
def test_the_config_can_expose_the_dashboard() -> None:
    port = free_port()
    assert dashboard_listeners(RayConfig(dashboard=True, dashboard_host="0.0.0.0", dashboard_port=port)) == ["0.0.0.0"]


def test_wait_cluster_names_what_is_missing(ray_session: None) -> None:
    """The session's cluster has one node and no dashboard (so no job agent): asking for two times out."""
    import ray

    address = ray.get_runtime_context().gcs_address
    out = subprocess.run(["s3ft", "wait-cluster", "--address", address, "--nodes", "2", "--timeout", "3"],
                         capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PATH": f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}"})
    assert out.returncode == 2
    assert f"Ray cluster at {address} not ready after 3 s: 1 of 2 node(s) alive" in out.stderr
    assert "job agent not registered" in out.stderr


@pytest.mark.slow
def test_an_unreachable_head_is_a_clear_error_in_bounded_time(tmp_path) -> None:
    """RAY_ADDRESS names a head where nothing listens: `ray.init` alone would retry for ever."""
    import time

    config = tmp_path / "c.yaml"
    config.write_text(f"output_dir: {tmp_path / 'run'}\nmodel: {{path: {tmp_path / 'model'}}}\n"
                      "data: {path: configs/data/gsm8k_sample.jsonl, task: gsm8k}\n")
    address = f"127.0.0.9:{free_port()}"
    env = os.environ | {"RAY_ADDRESS": address, "S3FT_CONNECT_TIMEOUT_S": "3"}
    started = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "s3ft.cli", "data", str(config)], env=env, check=False,
                         capture_output=True, text=True, timeout=120)
    took = time.monotonic() - started
    assert out.returncode == 2, out.stderr[-2000:]
    assert f"cannot reach the Ray head at {address} (RAY_ADDRESS) in 3 s: Connection refused" in out.stderr
    assert took < 60, took
