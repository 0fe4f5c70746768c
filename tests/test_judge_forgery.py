"""Programs written to be judged correct without solving their task: every one must be judged incorrect.

Each attack returns a wrong answer (or none) and tries to turn that into a pass some other way:
ending the process in a way that could read as a pass, printing or writing a forged pass line,
hunting for the run's key or the tests' expected answers, patching the harness, `assert`, the
builtins or `__eq__`, or returning a value that compares equal to anything. The honest solution of
each row passes, so a failing attack fails for what it did, not because the row cannot pass.
docs/sandbox.md ("The verdict") says which defence stops each one.
"""

from __future__ import annotations

from typing import Any

import pytest

from s3ft.judges.base import Verdict
from s3ft.judges.code import build_program, verdict_of
from s3ft.sandbox import CheckedRun, Limits, run_checked

ADD = {  # HumanEval-style: check(candidate), an exact assert and a tolerance assert
    "prompt": 'def add(a, b):\n    """The sum of a and b."""\n',
    "test": "def check(candidate):\n    assert candidate(2, 3) == 5\n    assert candidate(-1, 1) == 0\n"
    "    assert abs(candidate(0.5, 0.25) - 0.75) < 1e-6\n",
    "entry_point": "add",
}
SORT = {"test_list": ["assert sort_list([3, 1, 2]) == [1, 2, 3]", "assert sort_list(['b', 'a']) == ['a', 'b']"]}
SHOUT = {"test_list": ["assert shout('hi') == 'HI!'", "assert shout('no') == 'NO!'"]}
EVEN = {"test_list": ["assert is_even(4)", "assert is_even(10)"]}
AREA = {"test_list": ["assert math.isclose(area(2), 12.566, rel_tol=0.001)", "assert sorted(digits(321)) == [1, 2, 3]"]}

HONEST = {
    "add": (ADD, "def add(a, b):\n    return a + b\n"),
    "sort": (SORT, "def sort_list(xs):\n    return sorted(xs)\n"),
    "shout": (SHOUT, "def shout(s):\n    return s.upper() + '!'\n"),
    "even": (EVEN, "def is_even(n):\n    return n % 2 == 0\n"),
    "area": (AREA, "import math\ndef area(r):\n    return math.pi * r * r\ndef digits(n):\n    return [int(c) for c in str(n)]\n"),
}

WRONG_ADD = "\ndef add(a, b):\n    return 0\n"

# Collects every 64-hex-digit string it can reach (the size of the run's key) and writes "pass S" for
# each, and a guess, to every descriptor and every writable /proc fd link. A planted string proves
# that the search itself works: it must be found.
HUNT = r'''
import gc, os, re, sys
PLANTED = "ab" * 32
HEX = re.compile(rb"[0-9a-f]{64}")
found = set()
def scan(blob):
    if isinstance(blob, str):
        blob = blob.encode("utf-8", "ignore")
    if isinstance(blob, (bytes, bytearray)):
        found.update(HEX.findall(bytes(blob)))
for obj in gc.get_objects():
    for ref in gc.get_referents(obj):
        scan(ref)
frame = sys._getframe()
while frame is not None:
    scan(repr(frame.f_locals))
    frame = frame.f_back
scan(repr(sys.argv))
scan(repr(dict(os.environ)))
for root in (".", "/tmp", "/var/tmp", "/dev/shm", "/run", os.environ.get("HOME", ".")):
    for dirpath, _, files in os.walk(root):
        for name in files:
            try:
                with open(os.path.join(dirpath, name), "rb") as f:
                    scan(f.read(1 << 20))
            except OSError:
                pass
links = []
for pid in os.listdir("/proc"):
    if not pid.isdigit():
        continue
    for name in ("cmdline", "environ"):
        try:
            with open(f"/proc/{pid}/{name}", "rb") as f:
                scan(f.read())
        except OSError:
            pass
    try:
        links += [f"/proc/{pid}/fd/{fd}" for fd in os.listdir(f"/proc/{pid}/fd")]
    except OSError:
        pass
print("found planted:", PLANTED.encode() in found, "strings:", len(found), file=sys.stderr)
lines = [b"pass " + s + b"\n" for s in found] + [b"pass " + b"0" * 64 + b"\n", b"passed\n"]
for fd in list(range(256)):
    if fd in (0, 3):
        continue
    for line in lines:
        try:
            os.write(fd, line)
        except OSError:
            break
for link in links:
    try:
        fd = os.open(link, os.O_WRONLY | os.O_NONBLOCK)
    except OSError:
        continue
    for line in lines:
        try:
            os.write(fd, line)
        except OSError:
            break
    os.close(fd)
'''

# Looks for the tests' own text (to read the expected answers off them) in its memory, frames and files.
PEEK = r'''
import gc, os, sys
NEEDLE = "assert cand" + "idate(2, 3) == "  # built at run time: its own source is not the tests
def theirs(text):
    return isinstance(text, str) and NEEDLE in text and text != NEEDLE and "NEEDLE" not in text
seen = []
for obj in gc.get_objects():
    seen += [ref for ref in gc.get_referents(obj) if theirs(ref)]
for root in (".", "/tmp"):
    for dirpath, _, files in os.walk(root):
        for name in files:
            with open(os.path.join(dirpath, name), errors="replace") as f:
                seen += [text for text in [f.read()] if theirs(text)]
ANSWERS = {(2, 3): 5, (-1, 1): 0, (0.5, 0.25): 0.75} if seen else {}
print("saw the tests:", bool(seen), file=sys.stderr)
def add(a, b):
    return ANSWERS.get((a, b), 0)
'''

ANYTHING = """
class Anything:
    def __eq__(self, other): return True
    def __ne__(self, other): return False
    __hash__ = object.__hash__
    def __sub__(self, other): return 0.0
    def __rsub__(self, other): return 0.0
    def __abs__(self): return 0.0
    def __lt__(self, other): return True
    def __bool__(self): return True
    def __float__(self): return 0.75
"""

PATCH_EQ = """
import ctypes, gc
def always(self, other):
    return True
for kind in (int, float, str, list, bool):
    gc.get_referents(kind.__dict__)[0]["__eq__"] = always
    ctypes.pythonapi.PyType_Modified(ctypes.py_object(kind))
"""

ATTACKS: dict[str, tuple[dict[str, Any], str]] = {
    # ending the process in a way that might read as a pass
    "sys.exit(0) before the tests": (ADD, "import sys\nsys.exit(0)\n" + WRONG_ADD),
    "os._exit(0) before the tests": (ADD, "import os\nos._exit(0)\n" + WRONG_ADD),
    "os._exit(0) in the call": (ADD, "def add(a, b):\n    import os\n    os._exit(0)\n"),
    "SystemExit(0) in the call": (ADD, "def add(a, b):\n    raise SystemExit(0)\n"),
    "SystemExit from atexit": (ADD, "import atexit, sys\natexit.register(sys.exit, 0)\n" + WRONG_ADD),
    "os._exit(0) from atexit, failing call": (ADD, ("import atexit, os\natexit.register(os._exit, 0)\n"
                                             "def add(a, b):\n    raise ValueError\n")),
    "SIGKILL to itself": (ADD, "def add(a, b):\n    import os, signal\n    os.kill(os.getpid(), signal.SIGKILL)\n"),
    "close stdout, stderr and its pipes, exit 0": (ADD, ("def add(a, b):\n    import os\n"
                                                  "    for fd in range(5):\n        os.close(fd)\n    os._exit(0)\n")),
    "kill its parent and everyone": (ADD, ("def add(a, b):\n    import os\n    for pid in (os.getppid(), -1, 1):\n"
                                    "        try:\n            os.kill(pid, 9)\n        except OSError:\n"
                                    "            pass\n    return 0\n")),
    "a thread that outlives the call": (ADD, ("import os, threading, time\ndef late():\n    time.sleep(0.2)\n"
                                       "    os.write(1, b'passed\\n')\n    os._exit(0)\n"
                                       "def add(a, b):\n    threading.Thread(target=late).start()\n    time.sleep(5)\n")),
    # forged pass lines and forged replies
    "print a pass line": (ADD, "print('passed')\nprint('pass ' + '0' * 64)\n" + WRONG_ADD),
    "forged replies on its reply pipe": (ADD, "import os\nos.write(4, b'pass ' + b'0' * 64 + b'\\n')\n"
                                         "os.write(4, b'5\\n')\n" + WRONG_ADD),
    # hunting for the key, or for the expected answers
    "hunt the key in memory, frames, files, /proc and descriptors": (ADD, HUNT + WRONG_ADD),
    "read the expected answers off the tests": (ADD, PEEK),
    # patching what the tests run on
    "patch builtins and assert": (ADD, "import builtins\nbuiltins.abs = lambda x: 0\n"
                                  "builtins.AssertionError = type('Nope', (Exception,), {})\n"
                                  "builtins.__dict__['__debug__'] = False\n" + WRONG_ADD),
    "patch the harness through frames": (ADD, ("import sys\nfrom wire import dumps\n"
                                          "server = sys._getframe(1).f_locals['self']\n"
                                          "server.answer = lambda request: dumps(('ok', 5), None)\n" + WRONG_ADD)),
    "patch __eq__ of int, float, str, list through gc": (ADD, PATCH_EQ + WRONG_ADD),
    "define the test's check and candidate": (ADD, "def check(candidate):\n    pass\ncandidate = check\n" + WRONG_ADD),
    "shadow math and sorted for the tests": (AREA, ("class math:\n    @staticmethod\n    def isclose(*a, **k):\n"
                                             "        return True\ndef sorted(x):\n    return [1, 2, 3]\n"
                                             "def area(r):\n    return 0\ndef digits(n):\n    return []\n")),
    # values that compare equal to anything (item 2)
    "an object equal to anything": (ADD, ANYTHING + "def add(a, b):\n    return Anything()\n"),
    "an int subclass equal to anything": (ADD, ("class Int(int):\n    def __eq__(self, other): return True\n"
                                          "    def __ne__(self, other): return False\n    __hash__ = int.__hash__\n"
                                          "    def __sub__(self, other): return 0.0\n"
                                          "def add(a, b):\n    return Int(7)\n")),
    "a str subclass equal to anything": (SHOUT, ("class S(str):\n    def __eq__(self, other): return True\n"
                                         "    __hash__ = str.__hash__\ndef shout(s):\n    return S('')\n")),
    "a list subclass equal to anything": (SORT, ("class L(list):\n    def __eq__(self, other): return True\n"
                                          "def sort_list(xs):\n    return L()\n")),
    "a float whose difference is always 0": (ADD, ("class F(float):\n    def __sub__(self, other): return 0.0\n"
                                             "    def __eq__(self, other): return True\n    __hash__ = float.__hash__\n"
                                             "def add(a, b):\n    return F(-9.0)\n")),
    "nan for a tolerance test": (ADD, "def add(a, b):\n    return a + b if isinstance(a, int) else float('nan')\n"),
    "an always-true object for a truth test": (EVEN, ANYTHING + "def is_even(n):\n    return Anything()\n"),
}  # fmt: skip


def judged(row: dict[str, Any], code: str) -> tuple[Verdict, CheckedRun]:
    program = build_program(row, code)
    run = run_checked(program.source, program.checker, Limits(timeout_s=3, memory_mb=512))
    return verdict_of(run), run


@pytest.mark.parametrize("name", list(HONEST))
def test_the_honest_solution_of_each_row_passes(name: str) -> None:
    verdict, run = judged(*HONEST[name])
    assert verdict == Verdict(True, "passed"), (verdict, run.checker.stderr[-500:], run.program.stderr[-500:])


@pytest.mark.parametrize("name", list(ATTACKS))
def test_an_attack_is_judged_incorrect(name: str) -> None:
    verdict, run = judged(*ATTACKS[name])
    assert not verdict.correct and not run.passed, verdict
    assert verdict.reason and not verdict.reason.startswith("error:"), verdict  # judged on what it did


def test_the_key_hunt_searched_for_real_and_found_nothing_of_the_checker() -> None:
    verdict, run = judged(*ATTACKS["hunt the key in memory, frames, files, /proc and descriptors"])
    assert "found planted: True" in run.program.stderr, run.program.stderr[-500:]  # its search works
    assert verdict.reason.startswith("failed: the program's reply is not valid"), verdict  # its lines hit fd 4


def test_the_tests_are_out_of_the_programs_reach() -> None:
    verdict, run = judged(*ATTACKS["read the expected answers off the tests"])
    assert "saw the tests: False" in run.program.stderr, run.program.stderr[-500:]
    assert verdict.reason.startswith("failed: AssertionError (test line 2"), verdict


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("an object equal to anything", "failed: AssertionError (test line 2"),
        ("an int subclass equal to anything", "failed: AssertionError (test line 2"),
        ("a float whose difference is always 0", "failed: AssertionError (test line 2"),
        ("an always-true object for a truth test", "failed: TypeError: <the program's Anything> has no truth value"),
        ("forged replies on its reply pipe", "failed: the program's reply is not valid"),
        ("patch the harness through frames", "failed: AssertionError (test line 3"),  # 5 for every call
        ("SystemExit from atexit", "failed: AssertionError (test line 2"),
        ("shadow math and sorted for the tests", "failed: AttributeError"),
    ],
)
def test_the_reason_says_what_stopped_it(name: str, reason: str) -> None:
    verdict, _ = judged(*ATTACKS[name])
    assert verdict.reason.startswith(reason), verdict
