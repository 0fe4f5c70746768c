"""A Ray cluster of several nodes on one machine, for the multi-node tests and for reproducing a
multi-node problem by hand:

    python -m tests.multinode up --workers 2 --cpus 1      # prints the address and token; Ctrl-C tears it down

Each node is a `ray start --block` in namespaces of its own (`unshare --pid --mount --uts`):
- an address of its own, none the driver's (127.0.0.1): the head on 127.0.0.2, worker i on
  127.0.0.(i+2); Ray's processes on a node bind and advertise that address, so a component that
  reaches "the driver's host" instead of the node a thing runs on talks to the wrong node (these
  addresses never leave loopback; Ray would turn 127.0.0.1 itself into the host's network address);
- a hostname of its own (UTS namespace), `s3ft-head`, `s3ft-node1`, ..., which every node resolves
  to that node's address (an /etc/hosts of the rig's, bound in each node's mount namespace);
- a pid namespace: killing the node's first process kills every process of the node at once, as when a
  machine dies (`kill_node`), and nothing it started can outlive it — no orphan survives a teardown;
- a mount namespace: a node can be given a private directory at any path (`private_dirs`), as a node
  whose "shared" storage is not the same directory;
- its own CPUs (`--num-cpus`) and its own `--temp-dir` (nodes that share one remove each other's
  runtime-env files, DESIGN "Several nodes on one machine").

Teardown kills every node's pid namespace and removes the temp dirs, on exit, on failure and on
Ctrl-C; the namespaces' first processes also die with the process that made them (setpriv --pdeathsig),
so even a SIGKILLed test leaves nothing behind. A network namespace per node (veth pairs on a bridge)
would also keep a node from reaching another's 127.0.0.1; these loopback addresses do not, which is
the one thing this rig proves less than separate machines would.

Needs root and `unshare` (util-linux); `missing_requirements()` says why not otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from s3ft.runtime.ports import free_port

NODE_START_TIMEOUT_S = 120.0
HEAD_ADDRESS = "127.0.0.2"
HEAD_NAME = "s3ft-head"
# The GCS declares a silent node dead after ~3 s instead of Ray's default ~30 s: the fault tests wait less.
# Ray's memory monitor is off: every node sees the whole machine's memory, so it would kill one node's
# workers for what other nodes (or other programs on the machine) use.
NODE_ENV = {"RAY_health_check_period_ms": "1000", "RAY_health_check_timeout_ms": "1000",
            "RAY_health_check_failure_threshold": "3", "RAY_memory_monitor_refresh_ms": "0"}


def missing_requirements() -> str | None:
    """Why the rig cannot run here, or None."""
    if os.geteuid() != 0:
        return "the multi-node rig needs root (pid, mount and UTS namespaces per node)"
    if shutil.which("unshare") is None or shutil.which("setpriv") is None:
        return "`unshare` and `setpriv` (util-linux) are not installed"
    probe = subprocess.run(["unshare", "--pid", "--fork", "--mount", "--mount-proc", "--uts", "true"],
                           check=False, capture_output=True, text=True)
    if probe.returncode:
        return f"this host cannot make namespaces: {probe.stderr.strip()}"
    return None


@dataclass
class Node:
    name: str  # also its hostname
    address: str
    cpus: int
    temp_dir: Path
    private_dirs: tuple[str, ...] = ()
    proc: subprocess.Popen[bytes] | None = None
    namespace: str | None = None  # its pid namespace, as /proc/PID/ns/pid reads ("pid:[INODE]")

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@dataclass
class Rig:
    """A running cluster; `env` is what a client (ray job submit, `s3ft`) needs to reach it."""

    root: Path
    gcs_port: int
    dashboard_port: int
    token: str
    nodes: dict[str, Node] = field(default_factory=dict)

    @property
    def gcs_address(self) -> str:
        return f"{HEAD_ADDRESS}:{self.gcs_port}"

    @property
    def dashboard(self) -> str:
        return f"http://{HEAD_ADDRESS}:{self.dashboard_port}"

    @property
    def env(self) -> dict[str, str]:
        return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": self.token}

    def client_env(self) -> dict[str, str]:
        """os.environ for a client process: this cluster's token, no other cluster's address."""
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        return env | self.env | {"PATH": f"{Path(sys.executable).parent}:{env.get('PATH', '')}"}

    def start_node(self, node: Node, *, head: bool = False) -> None:
        """`ray start --block` for `node` in its own pid, mount and UTS namespaces."""
        args = [
            "ray", "start", "--block", f"--node-ip-address={node.address}", f"--num-cpus={node.cpus}",
            "--num-gpus=0", f"--temp-dir={node.temp_dir}", "--object-store-memory=134217728",
            f"--dashboard-agent-listen-port={free_port()}", f"--metrics-export-port={free_port()}",
            f"--runtime-env-agent-port={free_port()}",
        ]
        if head:
            args += ["--head", f"--port={self.gcs_port}", "--include-dashboard=true",
                     f"--dashboard-host={HEAD_ADDRESS}", f"--dashboard-port={self.dashboard_port}",
                     f"--ray-client-server-port={free_port()}"]
        else:
            args += [f"--address={self.gcs_address}"]
        hosts = self.root / "hosts"
        node.proc, node.namespace = start_in_namespaces(
            node.name, args, log=self.root / f"{node.name}.log", env=self.client_env() | NODE_ENV,
            hosts=hosts if hosts.is_file() else None, private_dirs=node.private_dirs)
        self.nodes[node.name] = node

    def wait_for_nodes(self, timeout_s: float = NODE_START_TIMEOUT_S) -> None:
        """Until every running node is ALIVE in Ray's view of the cluster and the head takes jobs."""
        deadline = time.monotonic() + timeout_s
        while True:
            exited = [n.name for n in self.nodes.values() if n.proc is not None and n.proc.poll() is not None
                      and n.proc.returncode != -signal.SIGKILL]
            if exited:
                raise RuntimeError(f"node(s) {exited} exited while starting:\n{self.log_tail()}")
            try:
                alive = {n["node_ip"] for n in self.ray_nodes() if n["state"] == "ALIVE"}
            except (subprocess.CalledProcessError, json.JSONDecodeError):
                alive = set()
            missing = [n.name for n in self.nodes.values() if n.alive and n.address not in alive]
            if not missing:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"node(s) {missing} did not join in {timeout_s:.0f} s:\n{self.log_tail()}")
            time.sleep(1)
        ready = subprocess.run(["s3ft", "wait-cluster", "--address", self.gcs_address, "--timeout",
                                str(max(5, int(deadline - time.monotonic())))], env=self.client_env(),
                               check=False, capture_output=True, text=True)
        if ready.returncode:
            raise RuntimeError(f"the head takes no jobs: {ready.stderr[-1000:]}\n{self.log_tail()}")

    def wait_until_dead(self, name: str, timeout_s: float = 120.0) -> None:
        """Until Ray's GCS has marked a killed node DEAD (its health checks failed)."""
        address = self.nodes[name].address
        deadline = time.monotonic() + timeout_s
        while any(n["node_ip"] == address and n["state"] == "ALIVE" for n in self.ray_nodes()):
            if time.monotonic() > deadline:
                raise RuntimeError(f"Ray still sees {name} alive {timeout_s:.0f} s after it was killed")
            time.sleep(1)

    def ray_nodes(self) -> list[dict[str, object]]:
        """Ray's own view of the nodes (`ray list nodes`): node_id, node_ip, state, resources."""
        out = subprocess.run(["ray", "list", "nodes", "--address", self.dashboard, "--format", "json", "--detail"],
                             env=self.client_env(), capture_output=True, text=True, timeout=60, check=True)
        return json.loads(out.stdout)

    def node_pids(self, name: str) -> set[int]:
        """Every process of a node: those in its pid namespace (host pids)."""
        namespace = self.nodes[name].namespace
        return namespace_pids(namespace) if namespace is not None else set()

    def restart_node(self, name: str) -> None:
        """Start a killed node again, with the same name, address and CPUs (a machine back after a reboot)."""
        node = self.nodes[name]
        self.kill_node(name)
        self.wait_until_dead(name)
        self.start_node(node, head=name == HEAD_NAME)
        self.wait_for_nodes()

    def ray_list(self, kind: str, *filters: str) -> list[dict[str, Any]]:
        """`ray list KIND --detail` (actors, tasks, placement-groups ...), dead ones included: where things ran."""
        cmd = ["ray", "list", kind, "--address", self.dashboard, "--format", "json", "--detail", "--limit", "10000"]
        for f in filters:
            cmd += ["--filter", f]
        out = subprocess.run(cmd, env=self.client_env(), capture_output=True, text=True, timeout=120, check=True)
        return json.loads(out.stdout) if out.stdout.lstrip().startswith("[") else []  # else "No resource ..."

    def node_ips(self) -> dict[str, str]:
        """node_id → address, for every node Ray has known (dead ones too)."""
        return {n["node_id"]: n["node_ip"] for n in self.ray_nodes()}

    def kill_node(self, name: str) -> None:
        """The node dies as a machine does: every one of its processes, at once (SIGKILL to its pid namespace)."""
        node = self.nodes[name]
        if node.proc is not None:
            kill_namespace(node.proc, node.namespace)

    def log_tail(self, chars: int = 2000) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-chars:]}" for p in sorted(self.root.glob("*.log")))

    def stop(self) -> None:
        for name in reversed(list(self.nodes)):
            self.kill_node(name)
        shutil.rmtree(self.root, ignore_errors=True)


def start_in_namespaces(name: str, cmd: Sequence[str], *, log: Path, env: dict[str, str], hosts: Path | None = None,
                        private_dirs: Sequence[str] = ()) -> tuple[subprocess.Popen[bytes], str]:
    """`cmd` as pid 1 of new pid, mount and UTS namespaces: one node of a rig (this Ray rig, the Slurm rig
    of tests/slurm_cluster.py). Its hostname is `name`, `hosts` is its /etc/hosts, and it sees a private
    tmpfs at each of `private_dirs`. Returns the process (`unshare`: killing it kills the node) and the
    node's pid namespace."""
    mounts = "".join(f"mkdir -p {str(d)!r} && mount -t tmpfs s3ft-private {str(d)!r} && " for d in private_dirs)
    bind = f"mount --bind {str(hosts)!r} /etc/hosts && " if hosts is not None else ""
    script = f"hostname {name} && {bind}{mounts}exec \"$@\""
    with log.open("ab") as out:
        proc = subprocess.Popen(
            # setpriv: SIGKILL when the process that started it dies (even by SIGKILL)
            ["setpriv", "--pdeathsig", "KILL", "unshare", "--pid", "--fork", "--kill-child", "--mount", "--mount-proc",
             "--propagation", "private", "--uts", "sh", "-c", script, name, *cmd],
            env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
    return proc, _child_namespace(proc.pid)


def kill_namespace(proc: subprocess.Popen[bytes], namespace: str | None, timeout_s: float = 30.0) -> None:
    """Kill a node as a machine dies: every process of its pid namespace at once."""
    if proc.poll() is None:
        proc.kill()  # unshare --kill-child: its pid 1 gets SIGKILL, and with it the whole namespace
        proc.wait()
    deadline = time.monotonic() + timeout_s
    while namespace is not None and namespace_pids(namespace) and time.monotonic() < deadline:
        time.sleep(0.1)  # the kernel kills the rest in a moment


def write_hosts(path: Path, addresses: dict[str, str]) -> Path:
    """The machine's /etc/hosts plus a line per node: every node resolves every node's hostname to its
    address, as a cluster's DNS would (Gloo binds to the address its hostname resolves to, and falls
    back to 127.0.0.1 when it resolves to nothing)."""
    path.write_text(Path("/etc/hosts").read_text() + "".join(f"{ip} {name}\n" for name, ip in addresses.items()))
    return path


def namespace_pids(namespace: str) -> set[int]:
    """Every process in a pid namespace ("pid:[INODE]"), as host pids."""
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.readlink(entry / "ns" / "pid") == namespace:
                    found.add(int(entry.name))
            except OSError:
                continue
    return found


def first_child(unshare_pid: int, timeout_s: float = 10.0) -> int:
    """The first process `unshare --fork` made: pid 1 of its namespace."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            children = Path(f"/proc/{unshare_pid}/task/{unshare_pid}/children").read_text().split()
            if children:
                return int(children[0])
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"unshare (pid {unshare_pid}) made no process in {timeout_s:.0f} s")


def _child_namespace(unshare_pid: int, timeout_s: float = 10.0) -> str:
    """The pid namespace of the first process `unshare --fork` made."""
    return os.readlink(f"/proc/{first_child(unshare_pid, timeout_s)}/ns/pid")


@contextmanager
def multinode_cluster(
    worker_cpus: Sequence[int] = (1, 1), head_cpus: int = 0, private_dirs: dict[str, Sequence[str]] | None = None,
) -> Iterator[Rig]:
    """A head (`s3ft-head`, 127.0.0.2, `head_cpus` CPUs) and a worker per entry of `worker_cpus`
    (`s3ft-node1` on 127.0.0.3, ...); `private_dirs` maps a node name to paths it sees a private tmpfs at."""
    root = Path(tempfile.mkdtemp(prefix="s3ft-rig-", dir="/tmp"))  # short: Ray's socket paths fit in 107 bytes
    rig = Rig(root, free_port(), free_port(), secrets.token_hex(32))
    private = private_dirs or {}
    names = {HEAD_NAME: HEAD_ADDRESS} | {f"s3ft-node{i}": f"127.0.0.{i + 2}" for i in range(1, len(worker_cpus) + 1)}
    write_hosts(root / "hosts", names)
    try:
        rig.start_node(Node(HEAD_NAME, HEAD_ADDRESS, head_cpus, root / "head", tuple(private.get(HEAD_NAME, ()))),
                       head=True)
        rig.wait_for_nodes()
        for i, cpus in enumerate(worker_cpus, start=1):
            name = f"s3ft-node{i}"
            rig.start_node(Node(name, f"127.0.0.{i + 2}", cpus, root / f"n{i}", tuple(private.get(name, ()))))
        rig.wait_for_nodes()
        yield rig
    finally:
        rig.stop()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.multinode", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start the cluster and keep it until Ctrl-C (or SIGTERM)")
    up.add_argument("--workers", type=int, default=2)
    up.add_argument("--cpus", type=int, default=1, help="CPUs of each worker node")
    up.add_argument("--head-cpus", type=int, default=0)
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with multinode_cluster([args.cpus] * args.workers, head_cpus=args.head_cpus) as rig:
        print(f"# {1 + args.workers} Ray nodes up; in another shell:\n"
              f"export RAY_AUTH_MODE=token RAY_AUTH_TOKEN={rig.token}\n"
              f"export RAY_ADDRESS={rig.dashboard}   # for launch/submit.sh, ray job/list/status\n"
              f"# GCS: {rig.gcs_address}; node logs under {rig.root}\n"
              f"# Ctrl-C here stops every node", flush=True)
        return hold(lambda: all(n.alive for n in rig.nodes.values()), rig.log_tail)


def hold(all_up: Callable[[], bool], log_tail: Callable[[], str]) -> int:
    """Keep a rig started by hand up until Ctrl-C (0) or until a node goes down (1, with the logs)."""
    try:
        while all_up():
            time.sleep(2)
        print("a node went down:\n" + log_tail(), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0

