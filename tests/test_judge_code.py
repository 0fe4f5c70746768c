"""The code judge on every real HumanEval problem and on hand-written MBPP rows, run for real.

Every canonical solution must pass and every planted bug must fail; MBPP responses pass or fail in
each of the three forms a model writes them (a fenced block, the `[BEGIN] ... [DONE]` of the MBPP
prompt, bare code). Hostile programs live in test_sandbox.py.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from typing import Any

import pytest

from s3ft.judges import build_judge
from s3ft.judges.code import CodeJudge, build_program, extract_code, usable_cpus
from tests.paths import shared_file

# Three MBPP-style problems: (right code, buggy code, test_list, test_setup_code).
MBPP = [
    (
        "def similar_elements(a, b):\n    return tuple(sorted(set(a) & set(b)))\n",
        "def similar_elements(a, b):\n    return tuple(sorted(set(a) | set(b)))\n",
        ["assert similar_elements((3, 4, 5, 6), (5, 7, 4, 10)) == (4, 5)",
         "assert similar_elements((1, 2, 3, 4), (5, 4, 3, 7)) == (3, 4)"],
        None,
    ),
    (
        ("def remove_occ(s, ch):\n    first = s.find(ch)\n    if first < 0:\n        return s\n"
        "    s = s[:first] + s[first + 1:]\n    last = s.rfind(ch)\n"
        "    return s[:last] + s[last + 1:] if last >= 0 else s\n"),
        "def remove_occ(s, ch):\n    return s.replace(ch, '')\n",
        ['assert remove_occ("hello", "l") == "heo"', 'assert remove_occ("abcda", "a") == "bcd"',
         'assert remove_occ("PHP", "P") == "H"', 'assert remove_occ("lollol", "l") == "ollo"'],
        None,
    ),
    (
        "def half(x):\n    return Fraction(x, 2)\n",
        "def half(x):\n    return x // 2\n",
        ["assert half(3) == Fraction(3, 2)", "assert half(4) == 2"],
        "from fractions import Fraction",
    ),
]  # fmt: skip


def fenced(code: str) -> str:
    return f"Here is my solution.\n\n```python\n{code}```\n\nIt keeps the common elements.\n```\nprint('usage')\n```"


def begin_done(code: str) -> str:
    return f"[BEGIN]\n {code!r} \n[DONE]"  # as in the MBPP paper's few-shot prompt: a quoted string


def mbpp_row(code: str, tests: list[str], setup: str | None) -> dict[str, Any]:
    return {"response": code, "test_list": tests, "test_setup_code": setup}


@pytest.fixture(scope="module")
def humaneval() -> list[dict[str, Any]]:
    with shared_file("humaneval", "HumanEval.jsonl").open() as f:
        return [json.loads(line) for line in f]


def test_extract_code_forms() -> None:
    assert extract_code("```python\nshort = 1\n```\ntext\n```py\nlonger = 22222\n```") == "longer = 22222\n"
    assert extract_code("```\nuntagged = 1\n```") == "untagged = 1\n"
    assert extract_code("```python\nx = 1\n```\n```\nlonger_but_untagged = 1\n```") == "x = 1\n"
    assert extract_code("```python\ncut = 1\n") == "cut = 1\n"  # a response stopped at max tokens
    assert extract_code("[BEGIN]\n 'def f():\\r\\n  return 1' \n[DONE]") == "def f():\r\n  return 1"
    assert extract_code("\n 'def f(s):\n  return s.split('a')' \n[DONE]") == "def f(s):\n  return s.split('a')"
    assert extract_code("[BEGIN]\ndef f():\n    return 1\n[DONE]") == "def f():\n    return 1"
    assert extract_code("    return x + 1\n") == "    return x + 1\n"  # a HumanEval completion keeps its indent


@pytest.mark.parametrize("form", [fenced, begin_done, lambda code: code], ids=["fenced", "begin-done", "bare"])
def test_mbpp_rows_pass_and_fail_as_they_should(form: Any) -> None:
    rows = [mbpp_row(form(code), tests, setup) for code, _, tests, setup in MBPP]
    rows += [mbpp_row(form(bug), tests, setup) for _, bug, tests, setup in MBPP]
    verdicts = build_judge("code", timeout_s=20).judge_batch(rows)
    assert [v.correct for v in verdicts] == [True] * len(MBPP) + [False] * len(MBPP), verdicts
    assert all(v.reason == "passed" for v in verdicts[: len(MBPP)])
    assert all(v.reason.startswith("failed: AssertionError (test line ") for v in verdicts[len(MBPP) :])


# MBPP-style rows whose values are more than ints and lists: each crosses from the program to the
# tests as the plain value an honest reader of the test expects (a Counter as a dict, a generator
# as its items), or stays in the program as a reference the tests pass back (objects of its classes).
RICH = {
    "Counter vs dict": ("from collections import Counter\ndef count(s):\n    return Counter(s)\n",
                        ["assert count('abca') == {'a': 2, 'b': 1, 'c': 1}"], None),
    "namedtuple vs tuple": (("from collections import namedtuple\nP = namedtuple('P', 'x y')\n"
                            "def point(a):\n    return P(a, a + 1)\n"), ["assert point(1) == (1, 2)"], None),
    "generator read by list()": ("def evens(n):\n    return (i for i in range(n) if i % 2 == 0)\n",
                                 ["assert list(evens(7)) == [0, 2, 4, 6]"], None),
    "objects of the program's class made by the test": (
        ("class Pair:\n    def __init__(self, a, b):\n        self.a, self.b = a, b\n"
        "def max_chain_length(arr, n):\n    arr = sorted(arr, key=lambda p: p.b)\n    end, count = None, 0\n"
        "    for p in arr:\n        if end is None or p.a > end:\n            end, count = p.b, count + 1\n    return count\n"),
        ["assert max_chain_length([Pair(5, 24), Pair(15, 25), Pair(27, 40), Pair(50, 60)], 4) == 3"], None),
    "a tree built by the setup code": (
        ("def max_height(node):\n    if node is None:\n        return 0\n"
        "    return 1 + max(max_height(node.left), max_height(node.right))\n"),
        ["assert max_height(root) == 3", "assert max_height(leaf) == 1"],
        ("class Node:\n    def __init__(self, data):\n        self.data, self.left, self.right = data, None, None\n"
        "root = Node(1)\nroot.left = Node(2)\nroot.left.left = Node(4)\nleaf = Node(9)\n")),
    "math imported by the program only": ("import math\ndef area(r):\n    return math.pi * r * r\n",
                                          ["assert math.isclose(area(2), 12.566, rel_tol=0.001)"], None),
    "plain values of every kind": (
        ("def kinds():\n    return [None, True, 2 ** 20000, -0.0, 1e308, 1 + 2j, b'\\x00\\xff', 'caf\\u00e9 \\ud800',"
        " (1, (2,)), {3, 4}, frozenset({5}), {'k': [1.5]}]\n"),
        [("assert kinds() == [None, True, 2 ** 20000, -0.0, 1e308, 1 + 2j, b'\\x00\\xff', 'caf\\u00e9 \\ud800',"
         " (1, (2,)), {3, 4}, frozenset({5}), {'k': [1.5]}]"),
         "assert type(kinds()[1]) is bool and type(kinds()[8]) is tuple"], None),
    "an exception the test expects": ("def parse(s):\n    return int(s)\n",
                                      ["try:\n    parse('x')\n    raised = False\nexcept ValueError:\n    raised = True",
                                       "assert raised"], None),
}  # fmt: skip


@pytest.mark.parametrize("name", list(RICH))
def test_mbpp_rows_with_rich_values_pass_with_their_reference_code(name: str) -> None:
    code, tests, setup = RICH[name]
    assert CodeJudge(timeout_s=10).judge_row(mbpp_row(code, tests, setup)).reason == "passed"


def test_reasons_say_what_happened() -> None:
    tests = ["assert f() == 1"]
    cases = {
        "def f():\n    return 1": "passed",
        "def f(:\n    return 1": "syntax error: ",
        "def f():\n    return 2": "failed: AssertionError (test line 1: assert f() == 1)",
        "def f():\n    return g()": "failed: NameError: name 'g' is not defined (line 3: return g())",
        "def f():\n    while True:\n        pass": "timeout",
        "def f():\n    return len(bytearray(64 << 30))": "memory limit",
        "import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)": "killed by signal 11",
        "def f():\n    return 1\nif __name__ == '__main__':\n    input()": "passed",  # a demo block is not run
    }
    verdicts = CodeJudge(timeout_s=2, memory_mb=512).judge_batch([mbpp_row(code, tests, None) for code in cases])
    for (code, reason), verdict in zip(cases.items(), verdicts):
        assert verdict.reason.startswith(reason), (code, verdict)
        assert verdict.correct == (reason == "passed")


def test_rows_that_cannot_be_judged_are_error_rows_not_a_crash() -> None:
    rows = [
        {"test_list": ["assert True"]},
        {"response": "x = 1", "test": "def check(c): pass"},
        {"response": "x = 1", "test_list": "assert True"},
        {"response": "x = 1", "test_list": ["assert x == 1"]},
    ]
    reasons = [v.reason for v in CodeJudge().judge_batch(rows)]
    assert reasons == [
        "error: missing field(s) response",
        "error: missing field(s) entry_point (or test_list)",
        "error: test_list is not a list of strings",
        "passed",
    ]


def test_a_response_with_the_whole_function_keeps_the_prompts_imports(humaneval: list[dict[str, Any]]) -> None:
    problem = humaneval[0]  # `from typing import List` lives in its prompt only
    code = "def has_close_elements(numbers: List[float], threshold: float) -> bool:\n" + problem["canonical_solution"]
    program = build_program(problem, code)
    assert "from typing import List" in program.source and "def has_close_elements" in program.source
    first_line = problem["canonical_solution"].strip().splitlines()[0]  # the tests' sandbox never holds the response
    assert repr(problem["test"]) in program.checker and first_line not in program.checker
    assert CodeJudge().judge_row({**problem, "response": fenced(code)}).reason == "passed"


@pytest.mark.slow
def test_every_humaneval_canonical_solution_passes_and_every_planted_bug_fails(humaneval: list[dict[str, Any]]) -> None:
    judge = CodeJudge(timeout_s=20)
    completions = [{**p, "response": p["canonical_solution"]} for p in humaneval]
    whole = [{**p, "response": fenced(p["prompt"] + p["canonical_solution"])} for p in humaneval[::4]]
    planted = [{**p, "response": "    return None\n"} for p in humaneval]
    verdicts = judge.judge_batch(completions + whole + planted)
    good, bad = verdicts[: len(completions) + len(whole)], verdicts[len(completions) + len(whole) :]
    rows = completions + whole
    assert [(r["task_id"], v.reason) for r, v in zip(rows, good) if not v.correct] == []
    assert [r["task_id"] for r, v in zip(planted, bad) if v.correct] == []
    assert len(humaneval) == 164


@pytest.mark.slow
def test_64_programs_run_side_by_side_and_queueing_never_counts_as_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    """64 one-second sleepers, 16 at a time, each with a 3 s timeout: one after another they need 64 s,
    side by side about 4 rounds of 1 s (sleep uses no CPU, so 16 fit on 2 cores). The whole batch
    outlasts one program's timeout, yet no program times out: the clock starts when the program does.
    This measures the local pool, so the session's Ray cluster (if an earlier test started it) is hidden."""
    monkeypatch.setitem(sys.modules, "ray", None)
    rows = [mbpp_row("import time\ntime.sleep(1.0)", ["assert True"], None) for _ in range(64)]
    start = time.monotonic()
    verdicts = CodeJudge(timeout_s=3, num_workers=16).judge_batch(rows)
    elapsed = time.monotonic() - start
    assert [v.reason for v in verdicts] == ["passed"] * 64
    assert 4 * 1.0 <= elapsed < 64 * 1.0 / 4, elapsed  # at least 4 programs at once, on average


def test_the_default_pool_is_one_worker_per_cpu_this_process_may_use(monkeypatch: pytest.MonkeyPatch) -> None:
    assert CodeJudge().num_workers == len(os.sched_getaffinity(0)) == usable_cpus()
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {3})  # pinned to one CPU of many (taskset, Slurm)
    assert CodeJudge().num_workers == 1 and CodeJudge(num_workers=5).num_workers == 5


@pytest.mark.slow
def test_on_a_ray_cluster_rows_go_out_as_ray_tasks(
    humaneval: list[dict[str, Any]], ray_session: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = [{**p, "response": p["canonical_solution"]} for p in humaneval[:6]]
    rows += [{**p, "response": "    return None\n"} for p in humaneval[:6]]

    def no_local_pool(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("judged in the driver's local pool, not on Ray")

    monkeypatch.setattr("s3ft.judges.code.ThreadPoolExecutor", no_local_pool)  # the driver's copy only
    verdicts = CodeJudge(timeout_s=20, num_workers=2).judge_batch(rows)
    assert [v.correct for v in verdicts] == [True] * 6 + [False] * 6, verdicts


@pytest.mark.slow
@pytest.mark.timeout(300)  # without the lent CPUs the tasks would wait for ever
def test_with_every_cpu_held_by_engines_the_programs_run_in_the_cpus_they_lend(
    humaneval: list[dict[str, Any]], ray_session: None
) -> None:
    """Engines on 1-CPU nodes hold every CPU in their placement groups (issue 12): the code judge's
    tasks go into those bundles instead of waiting for a CPU that is never free."""
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    from s3ft.runtime.lending import CpuSlot

    rows = [{**p, "response": p["canonical_solution"]} for p in humaneval[:3]]
    rows += [{**p, "response": "    return None\n"} for p in humaneval[:3]]
    # Every CPU of the cluster, not those free now: a task of an earlier test may still hold one for a
    # moment, and the group is ready only once it has them all.
    cpus = int(ray.cluster_resources()["CPU"])
    group = placement_group([{"CPU": 1}] * cpus, strategy="PACK")
    ray.get(group.ready(), timeout=120)
    try:
        deadline = time.monotonic() + 30  # the GCS's view of free resources follows the group a moment later
        while ray.available_resources().get("CPU", 0) >= 1:
            assert time.monotonic() < deadline, ray.available_resources()
            time.sleep(0.2)
        judge = CodeJudge(timeout_s=20, num_workers=2)
        judge.lend(lambda: [CpuSlot(PlacementGroupSchedulingStrategy(placement_group=group,
                                                                     placement_group_bundle_index=i), 1)
                            for i in range(cpus)])
        verdicts = judge.judge_batch(rows)
        assert [v.correct for v in verdicts] == [True] * 3 + [False] * 3, verdicts
    finally:
        remove_placement_group(group)


class _Busy:
    def ping(self) -> bool:
        return True


def _slot(group: Any, index: int, idle: bool) -> Any:
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    from s3ft.runtime.lending import CpuSlot

    return CpuSlot(PlacementGroupSchedulingStrategy(placement_group=group, placement_group_bundle_index=index), 1,
                   idle=idle)


def _until_no_cpu_free(unreserved: int) -> None:
    """Until the GCS's view of free and reserved CPUs, which follows a moment later, shows the test's groups."""
    import ray

    from s3ft.runtime.lending import unreserved_cpus

    deadline = time.monotonic() + 30
    while ray.available_resources().get("CPU", 0) >= 1 or unreserved_cpus() != unreserved:
        assert time.monotonic() < deadline, ray.cluster_resources()
        time.sleep(0.2)


@pytest.mark.slow
def test_a_busy_cpu_outside_the_engines_is_waited_for_rather_than_a_generating_engines(ray_session: None) -> None:
    """Judging streams beside generation: a CPU outside the engines' groups that is busy now is free in
    time, so judges wait for it rather than run on the CPU an engine generates on; an idle engine's CPU
    they do borrow (staged, the engines wait while the judges run)."""
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group

    from s3ft.runtime.lending import borrow, stranded

    cpus = int(ray.cluster_resources()["CPU"])
    group = placement_group([{"CPU": 1}])
    ray.get(group.ready(), timeout=120)
    busy = ray.remote(num_cpus=cpus - 1)(_Busy).remote()  # every other CPU, held outside any group
    try:
        assert ray.get(busy.ping.remote(), timeout=120)
        _until_no_cpu_free(unreserved=cpus - 1)
        generating, idle = _slot(group, 0, idle=False), _slot(group, 0, idle=True)
        assert borrow(lambda: [generating]) == []
        assert borrow(lambda: [idle]) == [idle]
        assert not stranded(lambda: [generating], None)  # a task waiting outside the groups gets its CPU in time
        assert stranded(lambda: [], generating)  # its engine retired: the slot is no longer lent
    finally:
        ray.kill(busy)
        remove_placement_group(group)


@pytest.mark.slow
@pytest.mark.timeout(300)  # unsent again, the first tasks would wait for ever
def test_programs_waiting_for_cpus_outside_the_engines_are_sent_again_once_none_is_left(
    humaneval: list[dict[str, Any]], ray_session: None, caplog: pytest.LogCaptureFixture
) -> None:
    """The tasks were sent to wait for a CPU outside the engines' groups, then the engines came to hold
    every CPU (a replacement engine took the last one after a node was lost): they are sent again into
    the CPUs the engines lend, busy or not, and every verdict comes back."""
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group

    from s3ft.runtime.lending import stranded

    rows = [{**p, "response": p["canonical_solution"]} for p in humaneval[:2]]
    rows += [{**p, "response": "    return None\n"} for p in humaneval[:2]]
    cpus = int(ray.cluster_resources()["CPU"])
    group = placement_group([{"CPU": 1}] * cpus, strategy="PACK")
    ray.get(group.ready(), timeout=120)
    slots = [_slot(group, i, idle=False) for i in range(cpus)]
    lending = threading.Event()  # until set, the engines lend nothing: the tasks go outside the groups
    try:
        _until_no_cpu_free(unreserved=0)
        judge = CodeJudge(timeout_s=20, num_workers=2)
        judge.lend(lambda: slots if lending.is_set() else [])
        assert not stranded(lambda: [], None)
        threading.Timer(2.0, lending.set).start()
        with caplog.at_level("WARNING", logger="s3ft.judges.code"):
            verdicts = judge.judge_batch(rows)
        assert [v.correct for v in verdicts] == [True] * 2 + [False] * 2, verdicts
        assert "a batch of programs is sent again" in caplog.text
    finally:
        remove_placement_group(group)
