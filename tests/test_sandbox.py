"""The sandbox against hostile programs, each run in a real process and its effects looked for outside.

Every hostile program is written so that it would pass its test if its attack worked: the code
judge must call each one incorrect, and the test process, its files, sockets and environment must
come out untouched. A mechanism this host lacks (docs/sandbox.md) skips the tests that need it.
"""

from __future__ import annotations

import functools
import os
import pwd
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from s3ft.judges.base import Verdict
from s3ft.judges.code import CodeJudge, failure_of
from s3ft.sandbox import Limits, run_program
from s3ft.sandbox.runner import MAX_PROCESSES
from s3ft.sandbox.uids import NOBODY, SLOTS, UID_BASE, candidates, lease_uid


@pytest.fixture(scope="module")
def isolation() -> tuple[str, ...]:
    result = run_program("print('ready')", timeout_s=30)
    assert result.returncode == 0 and result.stdout == "ready\n", result
    return result.isolation


def needs(isolation: tuple[str, ...], *mechanisms: str) -> None:
    missing = [m for m in mechanisms if m not in isolation]
    if missing:
        pytest.skip(f"this host gives the sandbox no {', '.join(missing)} (see docs/sandbox.md)")


def judged(code: str, **options: float) -> Verdict:
    """The code judge's verdict on `code` as an MBPP response whose only test is `assert True`."""
    return CodeJudge(**options).judge_row({"response": code, "test_list": ["assert True"]})  # type: ignore[arg-type]


def sandbox_pids() -> list[int]:
    """Live host processes running as a sandbox uid (root hosts give each program a uid of its own).

    Zombies are dead: a killed orphan stays one until the host's pid 1 reaps it, which may take a while.
    """
    pids = []
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(line.split(":", 1) for line in status.read_text().splitlines() if ":" in line)
        except OSError:
            continue
        if int(fields["Uid"].split()[0]) >= UID_BASE and not fields["State"].strip().startswith("Z"):
            pids.append(int(status.parent.name))
    return pids


def pids_with(marker: str) -> list[int]:
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if marker.encode() in cmdline.read_bytes():
                found.append(int(cmdline.parent.name))
        except OSError:
            continue
    return found


def test_a_program_runs_with_a_scrubbed_environment_in_its_own_directory() -> None:
    before = set(Path(os.environ.get("TMPDIR", "/tmp")).glob("s3ft-sandbox-*"))
    result = run_program("import os, sys\nprint(sorted(os.environ), os.listdir('.'))\nsys.exit(3)", timeout_s=10)
    assert result.returncode == 3 and not result.timed_out and result.signal is None
    assert result.stdout.startswith("['HOME', 'LANG', 'PATH', 'TMPDIR'] ['prog.py']")
    assert set(Path(os.environ.get("TMPDIR", "/tmp")).glob("s3ft-sandbox-*")) == before  # its temp dir is gone
    assert "rlimits" in result.isolation


def test_reading_a_secret_from_the_parent_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    secret = f"secret-{uuid.uuid4().hex}"
    monkeypatch.setenv("S3FT_TEST_SECRET", secret)
    steal = (
        "import os, glob\n"
        "found = os.environ.get('S3FT_TEST_SECRET', '')\n"
        "for path in glob.glob('/proc/*/environ'):\n"
        "    try:\n"
        "        found += open(path, 'rb').read().decode('latin-1')\n"
        "    except OSError:\n"
        "        pass\n"
        f"print(found)\nassert {secret!r} in found\n"
    )
    result = run_program(steal, timeout_s=10)
    assert secret not in result.stdout and result.returncode == 1
    assert not judged(steal).correct


def test_an_infinite_loop_is_stopped_at_the_timeout(isolation: tuple[str, ...]) -> None:
    start = time.monotonic()
    result = run_program("while True:\n    pass", timeout_s=1.5)
    assert result.timed_out and result.returncode is None
    assert time.monotonic() - start < 1.5 + 5  # setup and teardown on a loaded machine
    assert judged("while True:\n    pass", timeout_s=1.5).reason == "timeout"


@pytest.mark.slow
def test_a_fork_bomb_is_contained_and_leaves_nothing(isolation: tuple[str, ...]) -> None:
    bomb = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass"
    start = time.monotonic()
    verdict = judged(bomb, timeout_s=3)
    assert not verdict.correct and verdict.reason in ("timeout", "memory limit")
    assert time.monotonic() - start < 3 + 10
    if "uid" in isolation:
        assert sandbox_pids() == []
    assert os.getpid() > 0 and Path("/proc/self").exists()  # we are still here


FORK_AND_COUNT = """
import os, time
forked = 0
for _ in range(200):
    try:
        pid = os.fork()
    except OSError:
        break
    if pid == 0:
        time.sleep(60)
        os._exit(0)
    forked += 1
print(forked)
"""


@pytest.mark.parametrize("namespaces", [True, False], ids=["namespaces", "fallback"])
@pytest.mark.parametrize("cgroups", [True, False], ids=["cgroups", "no-cgroups"])
def test_a_program_cannot_start_more_processes_than_its_limit(
    namespaces: bool, cgroups: bool, isolation: tuple[str, ...], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without cgroups only RLIMIT_NPROC bounds the count, and root ignores it: the bound holds as root
    only because the program runs as a uid of its own (or in a user namespace)."""
    if "uid" not in isolation and not (namespaces and "user-ns" in isolation):
        pytest.skip("RLIMIT_NPROC counts every process of this user here (kind D in docs/sandbox.md)")
    if not cgroups:
        monkeypatch.setattr("s3ft.sandbox.cgroup._own_dirs", dict)
    result = run_program(FORK_AND_COUNT, timeout_s=20, namespaces=namespaces)
    assert result.returncode == 0, result
    if not cgroups:
        assert "cgroup-pids" not in result.isolation and {"uid", "user-ns"} & set(result.isolation)
    assert 0 < int(result.stdout) < MAX_PROCESSES
    assert sandbox_pids() == []  # the sleeping children died with the program


def test_cpu_time_is_limited_across_all_threads_and_judged_a_timeout() -> None:
    busy = (
        "import hashlib, threading\n"
        "block = bytes(1 << 20)\n"
        "def spin():\n"
        "    while True:\n"
        "        hashlib.sha256(block).digest()  # releases the GIL: the threads burn CPU side by side\n"
        "for _ in range(3):\n"
        "    threading.Thread(target=spin, daemon=True).start()\n"
        "spin()\n"
    )
    result = run_program(busy, timeout_s=60, cpu_s=2)
    assert result.signal == signal.SIGXCPU and not result.timed_out, result
    assert failure_of(result) == "timeout"


WRITE_FILES = """
import errno, os
chunk = b"x" * (1 << 20)
for name in {names!r}:
    try:
        with open(name, "wb") as f:
            for _ in range({mib}):
                f.write(chunk)
    except OSError as e:
        print(name, errno.errorcode[e.errno])
print(*(os.path.getsize(name) for name in {names!r}))
"""


@pytest.mark.parametrize("namespaces", [True, False], ids=["namespaces", "fallback"])
def test_a_file_cannot_grow_past_disk_mb(namespaces: bool) -> None:
    result = run_program(WRITE_FILES.format(names=["big"], mib=16), timeout_s=20, disk_mb=4, namespaces=namespaces)
    assert result.returncode == 0, result
    failed, size = result.stdout.splitlines()
    assert failed in ("big EFBIG", "big ENOSPC") and int(size) <= 4 << 20


def test_all_files_together_stay_within_disk_mb_in_a_mount_namespace(isolation: tuple[str, ...]) -> None:
    needs(isolation, "private-tmp")
    files = WRITE_FILES.format(names=["a", "b", "c"], mib=3)
    result = run_program(files, timeout_s=20, disk_mb=4)
    assert result.returncode == 0, result
    *failed, sizes = result.stdout.splitlines()
    assert failed and all(line.endswith("ENOSPC") for line in failed)
    assert sum(map(int, sizes.split())) <= 4 << 20


def test_allocating_many_gib_fails_inside_the_sandbox_only() -> None:
    greedy = "blocks = []\nwhile True:\n    blocks.append(bytearray(256 << 20))\n"
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result = run_program(greedy, timeout_s=20, memory_mb=512)
    assert result.returncode == 1 and "MemoryError" in result.stderr and not result.timed_out
    assert judged("x = bytearray(16 << 30)\nx[-1] = 1", memory_mb=512).reason == "memory limit"
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before < 100 << 10  # KiB: < 100 MiB


@pytest.mark.slow
def test_a_process_tree_shares_one_memory_limit(isolation: tuple[str, ...]) -> None:
    needs(isolation, "cgroup-memory")
    tree = (
        "import os, time\n"
        "for _ in range(16):\n"
        "    if os.fork() == 0:\n"
        "        block = bytearray(200 << 20)\n"
        "        for i in range(0, len(block), 4096):\n"
        "            block[i] = 1\n"
        "        time.sleep(1)\n"
        "        os._exit(0)\n"
        "for _ in range(16):\n"
        "    os.wait()\n"
    )
    result = run_program(tree, timeout_s=20, memory_mb=256)
    assert result.memory_limited and not result.timed_out
    assert failure_of(result) == "memory limit"


def test_writes_outside_the_sandbox_never_land(isolation: tuple[str, ...], tmp_path: Path) -> None:
    needs(isolation, "read-only-fs")
    name = f"s3ft-escape-{uuid.uuid4().hex}"
    targets = [tmp_path / name, Path("/var/tmp") / name, Path("/dev/shm") / name, Path(__file__).parent / name]
    tmp_path.chmod(0o777)
    write = "".join(f"open({str(t)!r}, 'w').write('escaped')\n" for t in targets)
    try:
        for target in targets:
            result = run_program(f"open({str(target)!r}, 'w').write('escaped')", timeout_s=10)
            assert result.returncode == 1 and "Error" in result.stderr
        assert not judged(write).correct
        assert [t for t in targets if t.exists()] == []
    finally:
        for target in targets:
            target.unlink(missing_ok=True)


def test_no_connection_reaches_a_listener_on_the_host(isolation: tuple[str, ...]) -> None:
    needs(isolation, "net-ns")
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.settimeout(1.0)
        port = listener.getsockname()[1]
        connect = f"import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=3)\ns.sendall(b'hi')"
        result = run_program(connect, timeout_s=10)
        assert result.returncode == 1 and "OSError" in result.stderr
        assert not judged(connect).correct
        with pytest.raises(TimeoutError):
            listener.accept()


@pytest.mark.parametrize("namespaces", [True, False], ids=["namespaces", "fallback"])
@pytest.mark.parametrize("target", ["parent", "-1"])
def test_killing_the_parent_or_everyone_reaches_no_one(namespaces: bool, target: str) -> None:
    if not namespaces and os.geteuid() != 0:
        pytest.skip("without namespaces a non-root sandbox shares our uid: kill(-1) would reach us")
    attack = (
        "import os, time\n"
        "parent = os.getppid()\n"
        "try:\n"
        f"    os.kill({target}, 9)\n"
        "except OSError:\n"
        "    pass\n"
        "time.sleep(0.5)\n"
        "assert os.getppid() != parent  # true only if the attack killed the jail that runs us\n"
    )
    result = run_program(attack, timeout_s=10, namespaces=namespaces)
    assert result.returncode == 1 and "AssertionError" in result.stderr, result  # the jail lived to report it
    assert judged(attack).reason.startswith("failed: AssertionError")
    assert Path("/proc/self").exists()


@pytest.mark.slow
@pytest.mark.parametrize("namespaces", [True, False], ids=["namespaces", "fallback"])
def test_a_double_forked_daemon_dies_with_the_program(namespaces: bool, isolation: tuple[str, ...]) -> None:
    if not namespaces and "uid" not in isolation:
        pytest.skip("without namespaces only a sandbox uid (root hosts) lets us find a daemon")
    marker = f"s3ft-daemon-{uuid.uuid4().hex}"
    proof = Path("/var/tmp") / marker  # world-writable on the host: a live daemon without namespaces could write here
    later = f"import time\ntime.sleep(2)\nopen({str(proof)!r}, 'w').write('alive')\n"
    daemon = (
        "import os, sys\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    if os.fork() == 0:\n"
        f"        os.execv(sys.executable, [sys.executable, '-c', {later!r}, {marker!r}])\n"
        "    os._exit(0)\n"
        "os.wait()\n"
        "raise SystemExit(0)\n"
    )
    try:
        result = run_program(daemon, timeout_s=10, namespaces=namespaces)
        assert result.returncode == 0
        assert pids_with(marker) == []
        assert not judged(daemon).correct
        time.sleep(3)  # past the daemon's 2 s: alive, it would have written its proof by now
        assert pids_with(marker) == [] and not proof.exists()
    finally:
        proof.unlink(missing_ok=True)


def test_gigabytes_on_stdout_are_cut_and_the_program_killed() -> None:
    flood = "import os\nchunk = b'x' * (1 << 20)\nwhile True:\n    os.write(1, chunk)\n"
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.monotonic()
    result = run_program(flood, timeout_s=30, max_output_bytes=1 << 20)
    assert result.output_limited and not result.timed_out and result.returncode is None
    assert len(result.stdout) == 1 << 20
    assert time.monotonic() - start < 10
    assert judged(flood, timeout_s=30).reason == "output limit"
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before < 100 << 10


def test_an_early_exit_does_not_pass_the_tests() -> None:
    for escape in ("import sys\nsys.exit(0)", "import os\nos._exit(0)", "raise SystemExit"):
        verdict = judged(escape)
        assert not verdict.correct and verdict.reason == "failed: the program exited before its tests finished"


def test_the_fallback_without_namespaces_still_limits_and_cleans_up(isolation: tuple[str, ...]) -> None:
    result = run_program("import os\nprint(os.getcwd())", timeout_s=10, namespaces=False)
    assert result.returncode == 0 and "pid-ns" not in result.isolation
    assert not Path(result.stdout.strip()).exists()  # its temp dir, removed


def test_uids_come_from_a_block_of_their_own_or_the_top_of_a_containers_map() -> None:
    assert candidates([(0, 1 << 32)]) == list(range(UID_BASE, UID_BASE + SLOTS))
    container = candidates([(0, 65536)])
    assert len(container) == SLOTS and max(container) < NOBODY
    assert not set(container) & {user.pw_uid for user in pwd.getpwall()}
    assert candidates([(0, 1000)]) == []  # nothing left that is not a user's: no sandbox, rather than a shared uid


def test_a_uid_is_leased_to_one_sandbox_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    if os.geteuid() != 0:
        pytest.skip("only a root judge leases uids")
    monkeypatch.setattr("s3ft.sandbox.uids.candidates", lambda ranges: [61000, 61001])
    with lease_uid() as first, lease_uid() as second:
        assert {first, second} == {61000, 61001}
        with pytest.raises(OSError, match="no sandbox uid is free"), lease_uid():
            pass
    with lease_uid() as again:
        assert again in (61000, 61001)


def test_in_a_container_mapping_few_uids_one_programs_end_kills_no_other(monkeypatch: pytest.MonkeyPatch) -> None:
    """A root judge in a user namespace that maps uids 0..65535 only (a rootless container), without a
    pid namespace: every program must still get a uid of its own. Were two to share one (`nobody`), the
    quick programs' cleanup, which kills every process of their uid, would kill the slow one and any
    host process running as that uid."""
    if os.geteuid() != 0:
        pytest.skip("only a root judge drops programs to a uid of their own")
    monkeypatch.setattr("s3ft.sandbox.uids.mapped_ranges", lambda: [(0, 65536)])
    monkeypatch.setattr("s3ft.judges.code.Limits", functools.partial(Limits, namespaces=False))
    monkeypatch.setitem(sys.modules, "ray", None)  # the local pool, where the patches above apply
    host_nobody = subprocess.Popen(["sleep", "60"], user=NOBODY, group=NOBODY, extra_groups=[])
    own_uid = f"import os\nassert 0 < os.getuid() < {NOBODY}, os.getuid()\n"
    slow = own_uid + "import time\ntime.sleep(3)\n"
    try:
        rows = [{"response": code, "test_list": ["assert True"]} for code in [slow] + [own_uid] * 4]
        verdicts = CodeJudge(timeout_s=20, num_workers=2).judge_batch(rows)
        assert [v.reason for v in verdicts] == ["passed"] * 5
        assert host_nobody.poll() is None  # still running
    finally:
        host_nobody.kill()
        host_nobody.wait()


UNPRIVILEGED = """
import sys
from s3ft.sandbox import run_program
write = run_program("open('/var/tmp/{name}', 'w').write('x')", timeout_s=10)
kill = run_program("import os\\nos.kill(-1, 9)", timeout_s=10)
print(",".join(write.isolation), write.returncode, kill.returncode, "ProcessLookupError" in kill.stderr)
"""


def test_an_unprivileged_user_gets_the_user_namespace_sandbox(isolation: tuple[str, ...]) -> None:
    """Run the sandbox as `nobody` (how most cluster users run it), with the system's Python."""
    system_python, setpriv = Path("/usr/bin/python3"), shutil.which("setpriv")
    if os.geteuid() != 0 or setpriv is None or not system_python.exists():
        pytest.skip("needs root (to become nobody), setpriv and /usr/bin/python3")
    name = f"s3ft-escape-{uuid.uuid4().hex}"
    repo = Path(__file__).resolve().parents[1]
    command = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", str(system_python), "-I", "-c",
               f"import sys; sys.path.insert(0, {str(repo)!r})\n" + UNPRIVILEGED.format(name=name)]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, cwd="/", env={"PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    applied, write_rc, kill_rc, nobody_to_kill = done.stdout.split()
    if "user-ns" not in applied:
        pytest.skip(f"this host allows no unprivileged user namespaces (applied: {applied})")
    assert {"pid-ns", "net-ns", "read-only-fs"} <= set(applied.split(","))
    assert write_rc == "1" and not (Path("/var/tmp") / name).exists()
    assert kill_rc == "1" and nobody_to_kill == "True"
