"""A throwaway one-node Slurm on localhost for the launch tests (Debian's `slurm-wlm` + `munge`).

    with slurm_cluster() as cluster:
        subprocess.run(["sbatch", "--wait", "job.sbatch"], env={**os.environ, **cluster.env})

Everything lives in a fresh temp dir: slurm.conf, the munge key and socket, state, spool, pid and log
files. munged, slurmctld and slurmd run in the foreground as children of this process, on free ports,
so they never meet a system Slurm or another test's. On exit every job is cancelled, every process
that carries this cluster's SLURM_CONF in its environment (slurmstepd, job scripts, what they
started) is killed, the daemons are stopped and the temp dir is removed.

Needs root (SlurmUser=root, munged's key checks) and the binaries; otherwise `pytest.skip` says which.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "srun", "sinfo", "squeue", "scancel", "scontrol")
MEMORY_MARGIN_MB = 1024  # RealMemory above what slurmd sees drains the node; stay below it


@dataclass
class SlurmCluster:
    root: Path
    node: str
    cpus: int
    memory_mb: int
    env: dict[str, str] = field(default_factory=dict)  # SLURM_CONF for sbatch/srun/sinfo

    def log_tail(self, chars: int = 3000) -> str:
        parts = []
        for name in ("slurmctld.log", "slurmd.log", "munged.log"):
            path = self.root / "log" / name
            if path.is_file():
                parts.append(f"--- {name}\n{path.read_text(errors='replace')[-chars:]}")
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

    def run(self, *cmd: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return subprocess.run(list(cmd), env={**os.environ, **self.env}, capture_output=True, text=True,
                              timeout=timeout)


def missing_requirements() -> str | None:
    """Why a Slurm cannot be started here, or None."""
    missing = [b for b in BINARIES if shutil.which(b) is None and not Path("/usr/sbin", b).exists()]
    if missing:
        return f"Slurm/munge binaries not installed ({', '.join(missing)}); apt-get install slurm-wlm munge"
    if os.geteuid() != 0:
        return "a throwaway Slurm needs root (SlurmUser=root, munged's key ownership checks)"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _memory_mb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    raise RuntimeError("no MemTotal in /proc/meminfo")


def _binary(name: str) -> str:
    return shutil.which(name) or str(Path("/usr/sbin", name))


def _write_config(root: Path, node: str, cpus: int, memory_mb: int) -> Path:
    for sub in ("state", "spool", "log", "run", "munge"):
        (root / sub).mkdir(mode=0o700)
    key = root / "munge" / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    conf = root / "slurm.conf"
    conf.write_text(f"""\
ClusterName=s3fttest
SlurmctldHost={node}(127.0.0.1)
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={root / "munge" / "sock"}
StateSaveLocation={root / "state"}
SlurmdSpoolDir={root / "spool"}
SlurmctldPidFile={root / "run" / "slurmctld.pid"}
SlurmdPidFile={root / "run" / "slurmd.pid"}
SlurmctldLogFile={root / "log" / "slurmctld.log"}
SlurmdLogFile={root / "log" / "slurmd.log"}
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
NodeName={node} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory_mb} State=UNKNOWN
PartitionName=debug Nodes={node} Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
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


def _kill_marked(marker: bytes, exclude: set[int], grace: float = 10) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        pids = processes_with_env(marker, exclude)
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.time() + grace
        while pids and time.time() < deadline:
            time.sleep(0.2)
            pids = processes_with_env(marker, exclude)
        if not pids:
            return


def _stop(proc: subprocess.Popen, grace: float = 15) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=grace)


@contextmanager
def slurm_cluster(start_timeout: float = 90) -> Iterator[SlurmCluster]:
    """Start munged, slurmctld and slurmd for this host as one idle node; stop and remove all on exit."""
    reason = missing_requirements()
    if reason:
        pytest.skip(reason)
    node = socket.gethostname().split(".")[0]
    cpus = len(os.sched_getaffinity(0))  # what `nproc` says
    memory_mb = max(256, _memory_mb() - MEMORY_MARGIN_MB)
    root = Path(tempfile.mkdtemp(prefix="slurm-", dir="/tmp"))  # short: the munge socket path must fit
    root.chmod(0o700)
    conf = _write_config(root, node, cpus, memory_mb)
    env = {"SLURM_CONF": str(conf)}
    marker = f"SLURM_CONF={conf}".encode()
    daemon_env = {**os.environ, **env}
    daemon_env.pop("SLURM_JOB_ID", None)
    cluster = SlurmCluster(root=root, node=node, cpus=cpus, memory_mb=memory_mb, env=env)
    munge = root / "munge"
    with ExitStack() as stack:
        stack.callback(shutil.rmtree, root, ignore_errors=True)

        def start(*cmd: str) -> subprocess.Popen:
            log = (root / "log" / f"{Path(cmd[0]).name}.out").open("wb")
            stack.callback(log.close)
            proc = subprocess.Popen(list(cmd), env=daemon_env, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)
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
        # On exit (callbacks run LIFO): cancel the jobs, stop slurmd and slurmctld, kill whatever the jobs
        # left behind (slurmstepd daemonizes, so it outlives slurmd), then stop munged.
        stack.callback(_kill_marked, marker, {munged.pid})
        ctld = start(_binary("slurmctld"), "-D", "-i", "-f", str(conf))
        slurmd = start(_binary("slurmd"), "-D", "-f", str(conf), "-N", node)
        stack.callback(cluster.cancel_all)

        while True:
            for name, proc in (("slurmctld", ctld), ("slurmd", slurmd), ("munged", munged)):
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited with {proc.returncode}\n{cluster.log_tail()}")
            try:
                state = cluster.run("sinfo", "--noheader", "-n", node, "-o", "%t", timeout=15).stdout.strip()
            except subprocess.TimeoutExpired:
                state = ""
            if state == "idle":
                break
            if time.time() > deadline:
                raise RuntimeError(f"node {node} not idle after {start_timeout:.0f}s (state {state!r})\n"
                                   f"{cluster.log_tail()}")
            time.sleep(0.5)
        yield cluster
