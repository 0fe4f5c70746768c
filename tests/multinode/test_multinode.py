"""The multi-node rig itself (tests/multinode/__init__.py): nodes with their own address, hostname, CPUs and
processes, and a node killed as a machine dies leaves no process behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.multinode import Rig

pytestmark = pytest.mark.slow

# A task pinned to each node reports what the node looks like from inside.
PROBE = """
import json, os, socket, ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
ray.init(log_to_driver=False)
@ray.remote(num_cpus=1)
def probe():
    return {"host": socket.gethostname(), "ip": ray.util.get_node_ip_address(), "pidns": os.readlink("/proc/self/ns/pid"),
            "resolved": socket.gethostbyname(socket.gethostname())}
nodes = [n for n in ray.nodes() if n["Alive"] and n["Resources"].get("CPU")]
print(json.dumps(ray.get([probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote()
                          for n in nodes])))
"""


def test_each_node_has_its_own_address_hostname_cpus_and_processes(multinode_rig: Rig) -> None:
    rig = multinode_rig
    nodes = {n["node_ip"]: n for n in rig.ray_nodes() if n["state"] == "ALIVE"}
    assert sorted(nodes) == ["127.0.0.2", "127.0.0.3", "127.0.0.4"]
    assert [nodes[ip]["resources_total"].get("CPU", 0) for ip in sorted(nodes)] == [0, 1, 1]
    assert "node:__internal_head__" in nodes["127.0.0.2"]["resources_total"]
    out = subprocess.run([sys.executable, "-c", PROBE], env=rig.client_env() | {"RAY_ADDRESS": rig.gcs_address},
                         check=False, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert sorted((s["host"], s["ip"]) for s in seen) == [("s3ft-node1", "127.0.0.3"), ("s3ft-node2", "127.0.0.4")]
    assert all(s["resolved"] == s["ip"] for s in seen)  # a node's hostname resolves to its own address
    ours = os.readlink("/proc/self/ns/pid")
    assert len({s["pidns"] for s in seen} | {ours}) == 3  # each node's processes in a pid namespace of its own


def test_a_killed_node_leaves_no_process_and_comes_back(multinode_rig: Rig) -> None:
    rig = multinode_rig
    before = rig.node_pids("s3ft-node2")
    assert len(before) >= 3  # ray start, raylet, agents, workers
    rig.kill_node("s3ft-node2")
    assert rig.node_pids("s3ft-node2") == set()
    assert not any(os.path.exists(f"/proc/{pid}") for pid in before)
    rig.restart_node("s3ft-node2")
    alive = sorted(n["node_ip"] for n in rig.ray_nodes() if n["state"] == "ALIVE")
    assert alive == ["127.0.0.2", "127.0.0.3", "127.0.0.4"]


def test_a_node_that_never_joins_is_named_in_bounded_time(multinode_rig: Rig) -> None:
    out = subprocess.run(["s3ft", "wait-cluster", "--address", multinode_rig.gcs_address, "--nodes", "4",
                          "--timeout", "5"], env=multinode_rig.client_env(), check=False, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 2
    assert f"Ray cluster at {multinode_rig.gcs_address} not ready after 5 s: 3 of 4 node(s) alive" in out.stderr
