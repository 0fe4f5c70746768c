"""A memory and pids cgroup per program, where the host lets us make one (root with cgroups v1, or v2).

RLIMIT_AS bounds one process; only a cgroup bounds the memory of a whole process tree (a fork bomb
whose every child allocates) and counts processes per program rather than per uid. Where no
cgroup can be made (not root, or a v2 hierarchy whose controllers are not delegated), the sandbox
runs without one and `SandboxResult.isolation` says so.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
import uuid
from pathlib import Path

ROOT = Path("/sys/fs/cgroup")


def _own_dirs() -> dict[str, Path]:
    """This process's cgroup dir per controller: `memory` and `pids` under v1, or one v2 dir as both."""
    found: dict[str, Path] = {}
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if controllers == "" and (ROOT / "cgroup.controllers").exists():
            v2 = ROOT / path.lstrip("/")
            enabled = (v2 / "cgroup.subtree_control").read_text().split()
            found.update({c: v2 for c in ("memory", "pids") if c in enabled})
        for c in set(controllers.split(",")) & {"memory", "pids"}:
            found[c] = ROOT / c / path.lstrip("/")
    return found


class Cgroup:
    """Child cgroups holding one program's tree; `procs` maps a controller to the file a jail joins by."""

    def __init__(self, memory_bytes: int, max_processes: int) -> None:
        self.dirs: dict[str, Path] = {}
        limits = {  # (v1 or v2 file, value, required): a dir has one name of each limit
            "memory": [("memory.limit_in_bytes", memory_bytes, True), ("memory.max", memory_bytes, True),
                       ("memory.memsw.limit_in_bytes", memory_bytes, False), ("memory.swap.max", 0, False)],
            "pids": [("pids.max", max_processes, True)],
        }  # fmt: skip
        name = f"s3ft-sandbox-{uuid.uuid4().hex[:12]}"
        try:
            parents = _own_dirs()
        except OSError:
            parents = {}
        for controller, parent in parents.items():
            path, limited = parent / name, False
            try:
                path.mkdir(exist_ok=True)
            except OSError:
                continue
            for file, value, required in limits[controller]:
                try:
                    (path / file).write_text(str(value))  # a file this kind of cgroup lacks fails too
                    limited |= required
                except OSError:
                    pass
            if limited:
                self.dirs[controller] = path
            else:
                with contextlib.suppress(OSError):
                    path.rmdir()

    @property
    def procs(self) -> dict[str, str]:
        return {c: str(p / "cgroup.procs") for c, p in self.dirs.items()}

    def oom_killed(self) -> bool:
        """Whether the kernel's OOM killer ended a process of this tree (the memory limit was hit)."""
        path = self.dirs.get("memory")
        for events in (path / "memory.events", path / "memory.oom_control") if path else ():
            if events.exists():
                fields = dict(line.split() for line in events.read_text().splitlines())
                return int(fields.get("oom_kill", 0)) > 0
        return False

    def remove(self) -> None:
        """Kill what is left in the cgroups (nothing, normally) and remove them."""
        for path in set(self.dirs.values()):
            for _ in range(50):
                try:
                    if not _kill_all(path):
                        path.rmdir()
                        break
                except OSError:
                    pass
                time.sleep(0.02)


def _kill_all(path: Path) -> bool:
    """SIGKILL every process of the cgroup; whether there were any."""
    if (path / "cgroup.kill").exists():
        (path / "cgroup.kill").write_text("1")
    pids = [int(p) for p in (path / "cgroup.procs").read_text().split()]
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return bool(pids)

