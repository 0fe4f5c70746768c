"""A machine of its own for one test: a pid and mount namespace whose init only reaps.

What a killed run leaves behind is then seen as on a real machine — reparented to init and still
running — and `ray stop --force` inside stops only this machine's Ray (it finds processes by name, so
on the host it would stop every Ray cluster of the machine). `/tmp/ray` is a private tmpfs inside, so
a local cluster started there does not take over the host's `session_latest`.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import psutil

from tests.multinode import first_child, namespace_pids

# pid 1 of the namespace: adopt orphans and reap them, nothing else (it ignores signals sent from inside).
REAPER = ("import os, time\nwhile True:\n    try:\n        os.wait()\n"
          "    except ChildProcessError:\n        time.sleep(0.2)")


@dataclass
class Machine:
    init: subprocess.Popen[bytes]
    namespace: str
    init_pid: int

    def popen(self, cmd: list[str], **popen: Any) -> subprocess.Popen[Any]:
        """`cmd` inside the machine (its parent, nsenter, stays outside)."""
        return subprocess.Popen(["nsenter", f"--target={self.init_pid}", "--pid", "--mount", "--", *cmd], **popen)

    def processes(self, *names: str) -> list[str]:
        """The machine's live processes whose command line holds one of `names` (all but init when none given)."""
        return [f"{pid} (parent {ppid}) {title[:100]}" for pid, ppid, title in self._live(names)]

    def pids(self, *names: str) -> list[int]:
        """The machine's live processes named `names` (by executable, or a process title that starts so)."""
        return [pid for pid, _, title in self._live(()) if any(title.startswith(n) or _exe(title) == n for n in names)]

    def _live(self, names: tuple[str, ...]) -> Iterator[tuple[int, int, str]]:
        for pid in namespace_pids(self.namespace) - {self.init_pid}:
            try:
                proc = psutil.Process(pid)
                if proc.status() == psutil.STATUS_ZOMBIE:
                    continue
                title, ppid = " ".join(proc.cmdline()), proc.ppid()
            except psutil.Error:
                continue
            if not names or any(n in title for n in names):
                yield pid, ppid, title


@contextmanager
def machine() -> Iterator[Machine]:
    """Needs root and util-linux (tests.multinode.missing_requirements says why not)."""
    script = 'mkdir -p /tmp/ray && mount -t tmpfs s3ft-machine /tmp/ray && exec "$@"'
    init = subprocess.Popen(["setpriv", "--pdeathsig", "KILL", "unshare", "--pid", "--fork", "--kill-child", "--mount",
                             "--mount-proc", "--propagation", "private", "sh", "-c", script, "machine",
                             sys.executable, "-c", REAPER])
    try:
        init_pid = first_child(init.pid)
        yield Machine(init, os.readlink(f"/proc/{init_pid}/ns/pid"), init_pid)
    finally:
        init.kill()  # --kill-child: the namespace's init dies, and every process in it with it
        init.wait()


def _exe(title: str) -> str:
    return os.path.basename(title.split(" ", 1)[0])
