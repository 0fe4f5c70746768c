"""A throwaway two-node Slurm on this machine (Debian's `slurm-wlm` + `munge`), for the launch tests and
for trying a job across nodes by hand:

    python -m tests.slurm_cluster up      # prints the SLURM_CONF to export; Ctrl-C tears it down

    with slurm_cluster() as cluster:
        subprocess.run(["sbatch", "--wait", "--nodes=2", "job.sbatch"], env={**os.environ, **cluster.env})

One slurmctld runs here (127.0.0.1) with munged; each node is a slurmd started as a node of the Ray
rig's kind (`tests.multinode.start_in_namespaces`):
- its hostname (UTS namespace) is its NodeName, `s3ft-slurm1`, `s3ft-slurm2`, and every node resolves
  every node's name to its address (the rig's /etc/hosts, bound in each node's mount namespace);
- its own NodeAddr, 127.0.0.5 and 127.0.0.6 (the Ray rig has 127.0.0.2-4, so both rigs can run at
  once), and its own `Port=` on its NodeName line: the slurmds share one network namespace, so they
  cannot both bind one SlurmdPort;
- a pid namespace whose pid 1 is the slurmd: the node's job steps (slurmstepd daemonizes) and all they
  start stay in it, so killing the node kills them all, as when a machine dies;
- node-local scratch: a private tmpfs at `local_dir` in its mount namespace, as a node's own /tmp
  (everything else, the run directories included, is the same on every node, as shared storage is);
- its own spool, pid and log files, half the CPUs and half the memory.

Everything lives in a fresh temp dir (slurm.conf, the munge key and socket, state, spool, logs), the
ports are free ones, so it never meets a system Slurm or another test's. On exit every job is
cancelled, each node's pid namespace is killed, the daemons are stopped and the temp dir is removed;
every daemon, and so every node, also dies with the process that started it (setpriv --pdeathsig),
even when that process is SIGKILLed.

Needs root (SlurmUser=root, munged's key checks, namespaces) and the binaries; `missing_requirements()`
says why not otherwise.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from s3ft.runtime.ports import free_port
from tests import multinode

BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "srun", "sinfo", "squeue", "scancel", "scontrol")
NODES = {"s3ft-slurm1": "127.0.0.5", "s3ft-slurm2": "127.0.0.6"}  # NodeName -> NodeAddr
MEMORY_MARGIN_MB = 1024  # RealMemory above what slurmd sees drains the node; stay below it


@dataclass
class SlurmCluster:
    root: Path
    nodes: dict[str, str]  # NodeName -> NodeAddr, in the order Slurm allocates them
    local_dir: Path  # a private directory on each node (node-local scratch)
    env: dict[str, str] = field(default_factory=dict)  # SLURM_CONF for sbatch/srun/sinfo

    def log_tail(self, chars: int = 3000) -> str:
        parts = []
        for path in sorted((self.root / "log").glob("*")):
            parts.append(f"--- {path.name}\n{path.read_text(errors='replace')[-chars:]}")
        return "\n".join(parts)

    def cancel_all(self, timeout: float = 60) -> None:
        """Cancel every job and wait (up to `timeout`) until the queue is empty."""
        try:
            self.run("scancel", "--full", "--user=root")
            deadline = time.time() + timeout
            while self.run("squeue", "--noheader").stdout.strip() and time.time() < deadline:
                time.sleep(1)
        except (subprocess.TimeoutExpired, OSError):
            pass

    def node_states(self) -> dict[str, str]:
        """NodeName -> Slurm's state of it (idle, alloc, down ...)."""
        out = self.run("sinfo", "--noheader", "--Node", "-o", "%N %t", timeout=15).stdout
        return dict(line.split() for line in out.splitlines() if line.strip())

    def wait_for_job(self, job_id: str, timeout: float) -> tuple[str, str]:
        """(JobState, ExitCode) once the job has ended and its processes are cleaned up, polled each second
        (`sbatch --wait` polls ever less often, up to every 10 s)."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            out = self.run("scontrol", "--oneliner", "show", "job", job_id).stdout
            fields = dict(f.split("=", 1) for f in out.split() if "=" in f)
            if fields.get("JobState") not in (None, "PENDING", "CONFIGURING", "RUNNING", "COMPLETING"):
                return fields["JobState"], fields.get("ExitCode", "")
            time.sleep(1)
        raise TimeoutError(f"job {job_id} still running after {timeout:.0f} s")

    def run(self, *cmd: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return subprocess.run(list(cmd), check=False, env={**os.environ, **self.env}, capture_output=True, text=True,
                              timeout=timeout)


def missing_requirements() -> str | None:
    """Why a Slurm cannot be started here, or None."""
    missing = [b for b in BINARIES if shutil.which(b) is None and not Path("/usr/sbin", b).exists()]
    if missing:
        return f"Slurm/munge binaries not installed ({', '.join(missing)}); apt-get install slurm-wlm munge"
    return multinode.missing_requirements()  # root, and namespaces for the nodes


def _memory_mb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    raise RuntimeError("no MemTotal in /proc/meminfo")


def _binary(name: str) -> str:
    return shutil.which(name) or str(Path("/usr/sbin", name))


def _write_config(root: Path, nodes: dict[str, str], cpus: int, memory_mb: int) -> Path:
    for sub in ("state", "spool", "log", "run", "munge"):
        (root / sub).mkdir(mode=0o700)
    key = root / "munge" / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    node_lines = "".join(f"NodeName={name} NodeAddr={addr} Port={free_port()} CPUs={cpus} "
                         f"RealMemory={memory_mb} State=UNKNOWN\n" for name, addr in nodes.items())
    conf = root / "slurm.conf"
    # %n in the slurmd paths is the NodeName: each node's spool, pid and log files are its own.
    conf.write_text(f"""\
ClusterName=s3fttest
SlurmctldHost={socket.gethostname().split(".")[0]}(127.0.0.1)
SlurmctldPort={free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={root / "munge" / "sock"}
StateSaveLocation={root / "state"}
SlurmdSpoolDir={root / "spool" / "%n"}
SlurmctldPidFile={root / "run" / "slurmctld.pid"}
SlurmdPidFile={root / "run" / "slurmd-%n.pid"}
SlurmctldLogFile={root / "log" / "slurmctld.log"}
SlurmdLogFile={root / "log" / "slurmd-%n.log"}
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
ReturnToService=2
KillWait=10
MinJobAge=300
SlurmdTimeout=120
InactiveLimit=0
{node_lines}PartitionName=debug Nodes={",".join(nodes)} Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
""")
    return conf


def processes_with_env(marker: bytes, exclude: set[int] = frozenset()) -> list[int]:
    """pids (not ours, not `exclude`) whose environment holds `marker`: what was started under this cluster."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in exclude or int(entry.name) == os.getpid():
            continue
        try:
            if (entry / "stat").read_text().rsplit(")", 1)[1].split()[0] in "ZX":
                continue  # a zombie waits for its parent, a kill does nothing to it
            environ = (entry / "environ").read_bytes()
        except (OSError, IndexError):
            continue
        if marker in environ.split(b"\0"):
            pids.append(int(entry.name))
    return pids


def _stop(proc: subprocess.Popen[bytes], grace: float = 15) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=grace)


@contextmanager
def slurm_cluster(nodes: dict[str, str] = NODES, start_timeout: float = 90) -> Iterator[SlurmCluster]:
    """Start munged, slurmctld and a slurmd per node (each in namespaces of its own); all idle on entry,
    all stopped and removed on exit."""
    reason = missing_requirements()
    if reason:
        raise RuntimeError(reason)
    cpus = max(1, len(os.sched_getaffinity(0)) // len(nodes))  # the machine's CPUs, split between the nodes
    memory_mb = max(256, (_memory_mb() - MEMORY_MARGIN_MB) // len(nodes))
    root = Path(tempfile.mkdtemp(prefix="slurm-", dir="/tmp"))  # short: socket paths (munge, Ray) must fit
    root.chmod(0o700)
    conf = _write_config(root, nodes, cpus, memory_mb)
    hosts = multinode.write_hosts(root / "hosts", nodes)
    env = {"SLURM_CONF": str(conf)}
    daemon_env = {**os.environ, **env}
    daemon_env.pop("SLURM_JOB_ID", None)
    cluster = SlurmCluster(root=root, nodes=dict(nodes), local_dir=root / "local", env=env)
    munge = root / "munge"
    with ExitStack() as stack:
        stack.callback(shutil.rmtree, root, ignore_errors=True)

        def start(*cmd: str) -> subprocess.Popen[bytes]:
            with (root / "log" / f"{Path(cmd[0]).name}.out").open("wb") as log:
                proc = subprocess.Popen(["setpriv", "--pdeathsig", "KILL", *cmd], env=daemon_env, stdout=log,
                                        stderr=subprocess.STDOUT, start_new_session=True)
            stack.callback(_stop, proc)
            return proc

        munged = start(_binary("munged"), "--foreground", "--force", f"--socket={munge / 'sock'}",
                       f"--key-file={munge / 'munge.key'}", f"--pid-file={munge / 'munged.pid'}",
                       f"--seed-file={munge / 'munged.seed'}", f"--log-file={root / 'log' / 'munged.log'}")
        deadline = time.time() + start_timeout
        while not (munge / "sock").exists():
            if munged.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"munged did not start (exit {munged.poll()})\n{cluster.log_tail()}")
            time.sleep(0.1)
        daemons = {"munged": munged, "slurmctld": start(_binary("slurmctld"), "-D", "-i", "-f", str(conf))}
        # On exit (callbacks run LIFO): cancel the jobs, kill every node (its slurmd, job steps and all they
        # started), then stop slurmctld and munged.
        for name in nodes:
            (root / "spool" / name).mkdir(mode=0o700)
            proc, namespace = multinode.start_in_namespaces(
                name, [_binary("slurmd"), "-D", "-f", str(conf), "-N", name], log=root / "log" / f"{name}.out",
                env=daemon_env, hosts=hosts, private_dirs=[str(cluster.local_dir)])
            stack.callback(multinode.kill_namespace, proc, namespace)
            daemons[f"slurmd {name}"] = proc
        stack.callback(cluster.cancel_all)

        while True:
            for name, proc in daemons.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited with {proc.returncode}\n{cluster.log_tail()}")
            try:
                states = cluster.node_states()
            except subprocess.TimeoutExpired:
                states = {}
            if all(states.get(name) == "idle" for name in nodes):
                break
            if time.time() > deadline:
                raise RuntimeError(f"nodes not idle after {start_timeout:.0f}s (states {states})\n{cluster.log_tail()}")
            time.sleep(0.5)
        yield cluster


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.slurm_cluster", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("up", help="start the two-node Slurm and keep it until Ctrl-C (or SIGTERM)")
    parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with slurm_cluster() as cluster:
        print(f"# {len(cluster.nodes)} Slurm nodes up ({', '.join(f'{n} on {a}' for n, a in cluster.nodes.items())});"
              f" in another shell:\nexport SLURM_CONF={cluster.env['SLURM_CONF']}\n"
              f"sinfo -N; sbatch --nodes=2 ...\n"
              f"# node-local scratch on each node: {cluster.local_dir}; daemon logs under {cluster.root / 'log'}\n"
              f"# Ctrl-C here stops every node and job", flush=True)
        return multinode.hold(lambda: "down" not in cluster.node_states().values(), cluster.log_tail)


if __name__ == "__main__":
    sys.exit(main())
