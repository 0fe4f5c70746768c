"""The sandbox's jail: `python -I -S -B jail.py key=value ...`, started by `s3ft.sandbox.runner`.

A standalone script (stdlib only, never imports s3ft) because it runs around untrusted code and,
where the host is root, as root: it enters new namespaces, builds the program's view of the
filesystem, sets the limits, drops to the sandbox uid and execs the program. Each mechanism is tried
and, where the host lacks it, skipped; every one that applied is reported to the runner on the
status pipe (`applied pid-ns net-ns ...`), so `SandboxResult.isolation` says what really held.
`fds=A,B,...` hands the runner's descriptors to the program as 3, 4, ... (the code judge's pipes
between a program and its checker); every other descriptor is closed before the exec. Plain
text lines and argv, not JSON: importing `json` (and `re` with it) would double the jail's start-up.

`jail.py --sweep UID` kills every process of a sandbox uid: the runner's last resort on hosts
without pid namespaces, where a double-forked daemon outlives the program's process group. It is
sound because the runner leases each running program a uid of its own (`s3ft/sandbox/uids.py`).
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import resource
import select
import signal
import sys

CLONE_NEWNS, CLONE_NEWIPC = 0x00020000, 0x08000000
CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x10000000, 0x20000000, 0x40000000
MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REC, MS_PRIVATE = 0x2, 0x4, 0x8, 0x4000, 0x40000
MOUNT_ATTR_RDONLY, MOUNT_ATTR_NOSUID = 0x1, 0x2
AT_FDCWD, AT_RECURSIVE = -100, 0x8000
OPEN_TREE_CLONE, MOVE_MOUNT_F_EMPTY_PATH = 0x1, 0x4
SYS_OPEN_TREE, SYS_MOVE_MOUNT, SYS_MOUNT_SETATTR = 428, 429, 442  # the same on every arch but alpha
PR_SET_PDEATHSIG, PR_SET_NO_NEW_PRIVS = 1, 38
WORKDIR = "/tmp"  # the program's private tmpfs, where there is a mount namespace
HIDDEN = ("/var/tmp", "/dev/shm", "/run", "/root")  # world-writable or private host dirs: shown empty
SYSTEM_PYTHONS = ("/usr/bin/python3", "/usr/local/bin/python3")
INT_KEYS = ("cpu_s", "memory_bytes", "disk_bytes", "processes", "namespaces", "status_fd", "parent", "uid")

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long


class MountAttr(ctypes.Structure):
    _fields_ = [(name, ctypes.c_uint64) for name in ("attr_set", "attr_clr", "propagation", "userns_fd")]


def check(result: int, what: str) -> int:
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return result


def mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    args = [s.encode() if s is not None else None for s in (source, target, fstype)]
    check(libc.mount(*args, ctypes.c_ulong(flags), data.encode() if data else None), f"mount {target}")


def read_only(path: str, recursive: bool) -> None:
    attr = MountAttr(MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID, 0, 0, 0)
    flags = AT_RECURSIVE if recursive else 0
    done = libc.syscall(SYS_MOUNT_SETATTR, AT_FDCWD, path.encode(), flags, ctypes.byref(attr), ctypes.sizeof(attr))
    check(done, f"read-only {path}")


def set_limit(which: int, soft: int, hard: int | None = None) -> None:
    resource.setrlimit(which, (soft, soft if hard is None else hard))


def become(uid: int) -> None:
    os.setgroups([])
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)


def closed_dir_above(path: str) -> str | None:
    """The topmost directory above `path` that other uids may not enter (no o+x), if any."""
    parts = os.path.realpath(path).split("/")
    above = ("/".join(parts[:i]) for i in range(2, len(parts)))
    return next((d for d in above if not os.stat(d).st_mode & 0o001), None)


def reachable(path: str) -> bool:
    return os.path.exists(path) and closed_dir_above(path) is None


def report(status: int, *words: object) -> None:
    """One status line for the runner: `applied ...`, `started`, `returncode N`, `signal N`, `error ...`."""
    os.write(status, (" ".join(map(str, words)) + "\n").encode())


def parse_config(args: list[str]) -> dict:
    cfg: dict = {"cgroups": [], "fds": []}
    for arg in args:
        key, _, value = arg.partition("=")
        if key == "cgroup":
            cfg["cgroups"].append(value.split(":", 1))
        elif key == "fds":
            cfg["fds"] = [int(fd) for fd in value.split(",") if fd]
        else:
            cfg[key] = int(value) if key in INT_KEYS else value
    return cfg


def enter_namespaces(cfg: dict) -> list[str]:
    """New mount, pid, net and ipc namespaces; through a user namespace when not root."""
    if not cfg["namespaces"]:
        return []
    flags = CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWNET | CLONE_NEWIPC
    uid, gid = os.getuid(), os.getgid()
    userns = os.geteuid() != 0
    if libc.unshare(flags | (CLONE_NEWUSER if userns else 0)) != 0:
        return []
    if userns:
        for name, text in (("setgroups", "deny"), ("uid_map", f"0 {uid} 1"), ("gid_map", f"0 {gid} 1")):
            with open(f"/proc/self/{name}", "w") as f:
                f.write(text)
    return ["user-ns"] * userns + ["pid-ns", "net-ns", "mount-ns", "ipc-ns"]


def sandbox_uid(cfg: dict, namespaces: list[str]) -> int | None:
    """The uid the runner leased for the program (root only); None in a user namespace, which drops privileges itself."""
    if os.geteuid() != 0 or "user-ns" in namespaces:
        return None
    return cfg.get("uid")


def build_filesystem(cfg: dict, uid: int | None) -> list[str]:
    """The program's view: the host read-only, a private tmpfs at /tmp, host temp and home dirs empty.

    Where the interpreter's install lies under a hidden dir, or one the sandbox uid may not enter
    (a pyenv under /root), a clone of it is taken first and mounted back at its own path on the
    empty tmpfs, so the program still finds its stdlib and libpython.
    """
    closed = closed_dir_above(cfg["python"]) if uid is not None else None  # hide it, then expose the install
    candidates = (*HIDDEN, cfg["home"], closed)
    hidden = sorted({d for d in candidates if d and d != "/" and os.path.isdir(d) and not os.path.islink(d)})
    hidden = [d for d in hidden if not any(d.startswith(h + "/") for h in hidden)]
    prefix = os.path.dirname(os.path.dirname(os.path.realpath(cfg["python"])))
    covered = any(prefix == d or prefix.startswith(d + "/") for d in (WORKDIR, *hidden))
    mount(None, "/", None, MS_REC | MS_PRIVATE)
    read_only("/", recursive=True)
    if covered:
        tree = check(libc.syscall(SYS_OPEN_TREE, AT_FDCWD, prefix.encode(), OPEN_TREE_CLONE | AT_RECURSIVE), "clone")
    owner = f",uid={uid},gid={uid}" if uid is not None else ""
    mount("tmpfs", WORKDIR, "tmpfs", MS_NOSUID | MS_NODEV, f"size={cfg['disk_bytes']},nr_inodes=4096,mode=0700{owner}")
    for d in hidden:
        mount("tmpfs", d, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,nr_inodes=256,mode=0755")
    if covered:
        os.makedirs(prefix, mode=0o755, exist_ok=True)
        check(libc.syscall(SYS_MOVE_MOUNT, tree, b"", AT_FDCWD, prefix.encode(), MOVE_MOUNT_F_EMPTY_PATH), "move_mount")
        os.close(tree)
    for d in hidden:
        read_only(d, recursive=False)
    applied = ["read-only-fs", "private-tmp"]
    try:
        mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, "hidepid=2")
        applied.append("private-proc")
    except OSError:
        pass  # a container that masks parts of /proc refuses a fresh one: the host's stays, read-only
    return applied


def pass_fds(fds: list[int]) -> None:
    """The runner's descriptors for the program (the code judge's pipes) as 3, 4, ...; all others closed."""
    high = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 100) for fd in fds]  # out of the way of 3.. first
    for number, fd in enumerate(high, start=3):
        os.dup2(fd, number)  # inheritable: they survive the exec
    os.closerange(3 + len(fds), 1 << 16)


def exec_program(cfg: dict, python: str, uid: int | None, namespaces: list[str], workdir: str) -> None:
    """In the program's process: limits, no privileges, then exec; never returns."""
    pass_fds(cfg["fds"])
    set_limit(resource.RLIMIT_CPU, cfg["cpu_s"], cfg["cpu_s"] + 1)
    set_limit(resource.RLIMIT_AS, cfg["memory_bytes"])
    set_limit(resource.RLIMIT_FSIZE, cfg["disk_bytes"])
    set_limit(resource.RLIMIT_NOFILE, 256)
    set_limit(resource.RLIMIT_CORE, 0)
    set_limit(resource.RLIMIT_NPROC, cfg["processes"])  # counts per uid, or per user namespace (below)
    if "user-ns" in namespaces:
        check(libc.unshare(CLONE_NEWUSER | CLONE_NEWNS), "unshare")  # locks our mounts; exec drops the caps
    check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
    if uid is not None:
        become(uid)
    os.chdir(workdir)
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": workdir, "TMPDIR": workdir}
    os.execve(python, [python, "-I", "-S", "-B", os.path.join(workdir, "prog.py")], env)


def init(cfg: dict, namespaces: list[str], uid: int | None, outer_alive: int) -> None:
    """Pid 1 of the new pid namespace (a plain child without one): run the program, reap, report.

    Dying with the outer jail (PDEATHSIG) and exiting as soon as the program does is what ends every
    descendant: when pid 1 of a pid namespace exits, the kernel kills all the rest, daemons included.
    """
    status = cfg["status_fd"]
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if select.select([outer_alive], [], [], 0)[0]:
        os._exit(1)  # the outer jail died before PDEATHSIG was set: nothing would stop us later
    with open(os.path.join(cfg["source_dir"], "prog.py"), "rb") as f:
        source = f.read()
    python, workdir, applied = cfg["python"], cfg["source_dir"], []
    if "mount-ns" in namespaces:
        try:
            filesystem = build_filesystem(cfg, uid)
            with open(os.path.join(WORKDIR, "prog.py"), "wb") as f:
                f.write(source)
            applied, workdir = filesystem, WORKDIR
        except OSError:
            pass  # a kernel before 5.12 lacks mount_setattr: the host's filesystem view stays, as without one
    if "read-only-fs" not in applied and uid is not None and not reachable(python):
        python = next((p for p in SYSTEM_PYTHONS if reachable(p)), python)  # e.g. a pyenv under /root
    if uid is not None:
        for path in (workdir, os.path.join(workdir, "prog.py")):
            os.chown(path, uid, uid)
        applied.append("uid")
    report(status, "applied", *applied, "rlimits")
    program = os.fork()
    if program == 0:
        try:
            exec_program(cfg, python, uid, namespaces, workdir)
        except BaseException as e:  # noqa: BLE001  (whatever failed, the program must not run half set up)
            os.write(2, f"sandbox: cannot start the program: {e}\n".encode())
        os._exit(126)
    report(status, "started")
    while (reaped := os.waitpid(-1, 0))[0] != program:  # as pid 1, orphans are reaped here too
        pass
    code = reaped[1]
    report(status, *(("signal", os.WTERMSIG(code)) if os.WIFSIGNALED(code) else ("returncode", os.WEXITSTATUS(code))))
    os._exit(0)


def join_cgroups(cfg: dict) -> list[str]:
    joined = []
    for name, procs in cfg["cgroups"]:
        try:
            with open(procs, "w") as f:
                f.write(str(os.getpid()))
            joined.append(f"cgroup-{name}")
        except OSError:
            pass
    return joined


def sweep(uid: int) -> None:
    """Kill every process of `uid`: kill(-1) as that uid reaches exactly its processes."""
    become(uid)
    for _ in range(100):  # a fork in flight can add one after a pass: repeat until none is left
        try:
            os.kill(-1, signal.SIGKILL)
        except ProcessLookupError:
            return


def main() -> None:
    if sys.argv[1] == "--sweep":
        sweep(int(sys.argv[2]))
        return
    cfg = parse_config(sys.argv[1:])
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)  # the judge died: so do we, and pid 1 after us
    if os.getppid() != cfg["parent"]:
        os._exit(1)
    joined = join_cgroups(cfg)
    namespaces = enter_namespaces(cfg)
    uid = sandbox_uid(cfg, namespaces)
    report(cfg["status_fd"], "applied", *joined, *namespaces)
    alive_r, alive_w = os.pipe()
    child = os.fork()
    if child == 0:
        os.close(alive_w)
        try:
            init(cfg, namespaces, uid, alive_r)
        except BaseException as e:  # noqa: BLE001
            report(cfg["status_fd"], "error", f"sandbox setup failed: {e}".replace("\n", " "))
        os._exit(1)
    os.waitpid(child, 0)


if __name__ == "__main__":
    main()
