"""Run one untrusted Python program in the sandbox and collect what it did, within bounds.

The host side: a fresh temp dir, cgroup and (as root) leased uid per program, the jail (`jail.py`)
started without a shell, its output read through pipes with a byte cap, a wall-clock deadline, and
at the end every process of the program killed and the temp dir and cgroup removed. What each
mechanism guarantees, and what stands in where the host lacks one, is in docs/sandbox.md.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from s3ft.sandbox.cgroup import Cgroup
from s3ft.sandbox.uids import lease_uid

JAIL = str(Path(__file__).with_name("jail.py"))
SETUP_TIMEOUT_S = 30.0  # namespaces, mounts and two interpreter starts, on a loaded machine
JAIL_HEADROOM = 64 << 20  # the jail's own two small processes share the cgroup's memory limit
MAX_PROCESSES = 32  # per program: its pids cgroup, and RLIMIT_NPROC on its own uid


@dataclass(frozen=True)
class SandboxResult:
    returncode: int | None  # the program's exit status; None when a signal or the sandbox ended it
    stdout: str  # at most max_output_bytes of each stream, decoded with replacement
    stderr: str
    timed_out: bool  # the wall-clock deadline passed (CPU overruns show as signal SIGXCPU)
    signal: int | None  # the signal that ended the program, when one did
    output_limited: bool = False  # a stream passed max_output_bytes and the program was killed
    memory_limited: bool = False  # the cgroup's OOM killer struck (under RLIMIT_AS alone: MemoryError)
    duration_s: float = 0.0  # from the program's start to its end
    isolation: tuple[str, ...] = ()  # the mechanisms that applied, e.g. ("pid-ns", "net-ns", "uid", ...)
    error: str | None = None  # the sandbox itself failed to set the program up


def default_python() -> str:
    """The host's own interpreter (not a venv's wrapper): run with -I -S, the program sees the stdlib only."""
    return os.path.realpath(getattr(sys, "_base_executable", sys.executable))


def run_program(
    source: str,
    *,
    timeout_s: float = 10.0,
    cpu_s: int | None = None,
    memory_mb: int = 1024,
    max_processes: int = MAX_PROCESSES,
    disk_mb: int = 64,
    max_output_bytes: int = 1 << 20,
    python: str | None = None,
    namespaces: bool = True,
) -> SandboxResult:
    """Run `source` as `python -I -S -B prog.py` in a fresh sandbox; never raises for what the program does.

    `cpu_s` is each process's CPU-time limit (default: the timeout + 1 s); `namespaces=False` skips
    the namespaces (the fallback a host without them gets; for tests). Raises OSError only when the
    host cannot start a sandbox (no free uid, no processes or disk left).
    """
    limits = Limits(timeout_s, cpu_s, memory_mb, max_processes, disk_mb, max_output_bytes, python, namespaces)
    with sandbox(source, limits) as run:
        run.start()
        run.pump()
        return run.result()


@dataclass(frozen=True)
class Limits:
    """What `run_program` takes besides the source (see there)."""

    timeout_s: float = 10.0
    cpu_s: int | None = None
    memory_mb: int = 1024
    max_processes: int = MAX_PROCESSES
    disk_mb: int = 64
    max_output_bytes: int = 1 << 20
    python: str | None = None
    namespaces: bool = True


@contextlib.contextmanager
def sandbox(source: str, limits: Limits) -> Iterator[_Run]:
    """A sandbox set up for `source`, not yet started: a temp dir, a cgroup and (as root) a leased uid.

    On leaving, every process of the program is killed before the uid's lease ends, then the cgroup
    and the temp dir go.
    """
    workdir = tempfile.mkdtemp(prefix="s3ft-sandbox-")
    cgroup = Cgroup((limits.memory_mb << 20) + JAIL_HEADROOM, limits.max_processes)
    try:
        Path(workdir, "prog.py").write_text(source, encoding="utf-8", errors="surrogatepass")
        config = {
            "source_dir": workdir,
            "python": limits.python or default_python(),
            "home": os.path.expanduser("~"),
            "cpu_s": int(limits.timeout_s) + 1 if limits.cpu_s is None else limits.cpu_s,
            "memory_bytes": limits.memory_mb << 20,
            "disk_bytes": limits.disk_mb << 20,
            "processes": limits.max_processes,
            "namespaces": int(limits.namespaces),
        }
        args = [f"{k}={v}" for k, v in config.items()] + [f"cgroup={c}:{p}" for c, p in cgroup.procs.items()]
        with lease_uid() as uid:  # held until every process of the uid is dead: see uids.py
            run = _Run(workdir, cgroup, limits.timeout_s, limits.max_output_bytes, uid, args)
            try:
                yield run
            finally:
                run.kill()
    finally:
        cgroup.remove()
        shutil.rmtree(workdir, ignore_errors=True)


class _Run:
    """One jail process and its pipes: stdout, stderr, the jail's status lines, and any the caller adds."""

    def __init__(
        self, workdir: str, cgroup: Cgroup, timeout_s: float, max_output_bytes: int, uid: int | None, args: list[str]
    ) -> None:
        self.cgroup, self.timeout_s, self.cap = cgroup, timeout_s, max_output_bytes
        self.workdir, self.uid, self.args = workdir, uid, args
        self.status: dict = {"applied": []}
        self.out: dict[str, bytearray] = {"stdout": bytearray(), "stderr": bytearray()}
        self.started: float | None = None
        self.ended = 0.0
        self.timed_out = self.output_limited = False
        self.proc: subprocess.Popen | None = None
        self.status_r = -1

    def start(self, fds: tuple[int, ...] = ()) -> None:
        """Start the jail; `fds` reach the program as descriptors 3, 4, ... (the host keeps its copies)."""
        status_r, status_w = os.pipe()
        uid = [f"uid={self.uid}"] if self.uid is not None else []
        fd_list = [f"fds={','.join(map(str, fds))}"] if fds else []
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-I", "-S", "-B", JAIL, *self.args, *uid, *fd_list,
                 f"status_fd={status_w}", f"parent={os.getpid()}"],
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                pass_fds=(status_w, *fds), start_new_session=True, cwd=self.workdir,
                env={"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"},
            )  # fmt: skip
        except BaseException:
            os.close(status_r)
            raise
        finally:
            os.close(status_w)
        self.status_r = status_r

    def pump(self, streams: dict[int, str] | None = None, stop: int | None = None) -> None:
        """Read the pipes until the jail is done, the deadline passes, the output cap is hit or `stop`
        becomes readable; `streams` are more pipes to read (into `out[name]`, under the same cap)."""
        assert self.proc is not None and self.proc.stdout and self.proc.stderr
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ, "stdout")
        sel.register(self.proc.stderr, selectors.EVENT_READ, "stderr")
        sel.register(self.status_r, selectors.EVENT_READ, "status")
        for fd, name in (streams or {}).items():
            self.out[name] = bytearray()
            sel.register(fd, selectors.EVENT_READ, name)
        if stop is not None:
            sel.register(stop, selectors.EVENT_READ, "stop")
        try:
            self._pump(sel)
        finally:  # also when the judge itself is interrupted: the program must not outlive this call
            self.ended = time.monotonic()
            sel.close()
            self.kill()

    def _pump(self, sel: selectors.BaseSelector) -> None:
        status_line = bytearray()
        drain_until = None  # once the jail is gone, writers left over get a moment, not forever
        deadline = time.monotonic() + SETUP_TIMEOUT_S
        while any(key.data != "stop" for key in sel.get_map().values()):
            now = time.monotonic()
            if drain_until is not None and now >= drain_until:
                return
            if now >= deadline:
                self.timed_out = self.started is not None
                return
            for key, _ in sel.select(min(deadline, drain_until or deadline) - now):
                if key.data == "stop":
                    return
                data = os.read(key.fd, 1 << 16)
                if not data:
                    sel.unregister(key.fileobj)
                    if key.data == "status":
                        drain_until = time.monotonic() + 1.0
                elif key.data == "status":
                    *lines, rest = (status_line + data).split(b"\n")
                    status_line = bytearray(rest)
                    for line in lines:
                        self._note(line)
                    if self.started is None and "started" in self.status:
                        self.started = time.monotonic()
                        deadline = self.started + self.timeout_s
                else:
                    buf = self.out[key.data]
                    buf += data[: self.cap + 1 - len(buf)]
                    if len(buf) > self.cap:
                        del buf[self.cap :]
                        self.output_limited = True
                        return

    def _note(self, line: bytes) -> None:
        """One status line of the jail (see `jail.report`)."""
        word, _, rest = line.decode("utf-8", "replace").partition(" ")
        if word == "applied":
            self.status["applied"] += rest.split()
        elif word in ("returncode", "signal") and rest.isdigit():
            self.status[word] = int(rest)
        elif word in ("started", "error"):
            self.status[word] = rest

    def kill(self) -> None:
        """End everything the program started: its process group, its pid namespace (pid 1 dies with
        the jail), and where there was no pid namespace, every process of its leased uid. Once."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if not self.ended:
            self.ended = time.monotonic()
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
        os.close(self.status_r)
        proc.stdout.close()  # type: ignore[union-attr]
        proc.stderr.close()  # type: ignore[union-attr]
        if self.uid is not None and "pid-ns" not in self.status["applied"]:
            subprocess.run([sys.executable, "-I", "-S", "-B", JAIL, "--sweep", str(self.uid)], env={}, check=False)

    def result(self) -> SandboxResult:
        s = self.status
        killed = self.timed_out or self.output_limited or "returncode" not in s and "signal" not in s
        return SandboxResult(
            returncode=None if killed else s.get("returncode"),
            stdout=self.out["stdout"].decode("utf-8", "replace"),
            stderr=self.out["stderr"].decode("utf-8", "replace"),
            timed_out=self.timed_out,
            signal=int(signal.SIGKILL) if killed and self.started else s.get("signal"),
            output_limited=self.output_limited,
            memory_limited=self.cgroup.oom_killed(),
            duration_s=self.ended - self.started if self.started else 0.0,
            isolation=tuple(dict.fromkeys(s["applied"])),
            error=s.get("error") or (None if self.started else "sandbox did not start the program"),
        )
