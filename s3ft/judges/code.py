"""The `code` judge: a response is correct when its program passes the row's tests in the sandbox.

Rows are HumanEval-style (`prompt`, `test`, `entry_point`: the tests define `check(candidate)`) or
MBPP-style (`test_list` of assert lines, optional `test_setup_code`). The program is taken from the
response (`extract_code`) and runs in a sandbox; the tests run in a second sandbox, the checker,
and call the program's functions over pipes (`build_program`, `s3ft.sandbox.run_checked`). Only
the checker can report a pass (docs/sandbox.md, "The verdict"). The reason names what happened:
`passed`, `syntax error: ...`, `failed: ...`, `timeout`, `memory limit`, `output limit`,
`killed by signal N`, `error: ...`.
"""

from __future__ import annotations

import ast
import builtins
import functools
import logging
import math
import os
import re
import signal
import sys
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from s3ft.errors import S3FTError
from s3ft.judges.base import Judge, Verdict, register
from s3ft.runtime import lending
from s3ft.runtime.lending import Lender
from s3ft.sandbox import CheckedRun, Limits, SandboxResult, run_checked

log = logging.getLogger(__name__)

_FENCE = re.compile(r"```[ \t]*([\w+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)
_PYTHON_TAGS = ("python", "python3", "py")
_WEAK = ("pid-ns", "net-ns", "read-only-fs")  # without these the sandbox is a documented fallback: say so once
_HARNESS = Path(__file__).with_name("harness")
# Each sandbox's prog.py: wire.py becomes the module `wire`, then the side's harness runs its job.
# The program's own code and the tests are string literals in JOB, run by the harness (server.py:
# the program, with __name__ "__program__", so a response's `if __name__ == "__main__":` demo is
# not run; checker.py: the tests).
_BOOT = """import sys, types
wire = types.ModuleType("wire")
exec(compile({wire!r}, "wire.py", "exec"), wire.__dict__)
sys.modules["wire"] = wire
harness = {{"__name__": "__harness__"}}
exec(compile({main!r}, {name!r}, "exec"), harness)
harness["main"]({job!r})
"""


@dataclass(frozen=True)
class Program:
    """One row ready for the sandboxes: the response's code behind its server, and the checker with the tests."""

    source: str  # the program's sandbox: server.py and the response's code (untrusted)
    checker: str  # the checker's sandbox: checker.py and the row's tests (never sees the response)


def extract_code(response: str) -> str:
    """The program in a response: the longest ```python block (the longest untagged one where none is
    tagged), else the body of the MBPP prompt's `[BEGIN] ... [DONE]`, else the response as it is."""
    blocks = _FENCE.findall(response)
    chosen = [body for tag, body in blocks if tag.lower() in _PYTHON_TAGS] or [body for tag, body in blocks if not tag]
    if chosen:
        return max(chosen, key=len)
    if "[BEGIN]" in response or "[DONE]" in response:
        return _unquote(response.split("[BEGIN]", 1)[-1].split("[DONE]", 1)[0])
    return response


def _unquote(body: str) -> str:
    """The MBPP few-shot prompt quotes its code ('def f(x):\\n ...'): read such a string literal.

    `ast.literal_eval` only parses literals, it never runs code; a body that is not one literal
    (quotes inside the code) loses its outer quotes instead.
    """
    body = body.strip()
    if len(body) < 2 or body[0] != body[-1] or body[0] not in "'\"":
        return body
    try:
        value = ast.literal_eval(body)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return body[1:-1]
    return value if isinstance(value, str) else body[1:-1]


def build_program(row: Mapping[str, Any], code: str) -> Program:
    """The response's code for the program's sandbox; the row's tests for the checker's.

    HumanEval: the program is prompt + completion; a response that writes the whole
    `def entry_point` comes after the prompt instead of completing it, so the prompt's imports and
    helpers still stand and the response's definition replaces the prompt's stub. The checker runs
    the prompt (its helpers, such as `poly` or `encode_cyclic`, are the prompt's, never the
    program's), the test, then `check(entry_point)`. MBPP: the program is setup code + code; the
    checker runs the setup code, then the asserts.
    """
    if row.get("test_list") is not None:
        tests = row["test_list"]
        if not isinstance(tests, list) or not all(isinstance(t, str) for t in tests):
            raise ValueError("test_list is not a list of strings")
        setup = str(row.get("test_setup_code") or "")
        source, job = f"{setup}\n{code}\n", {"setup": setup, "test": "\n".join(tests) + "\n", "entry_point": ""}
    else:
        entry, prompt = str(row["entry_point"]), str(row.get("prompt") or "")
        defines = re.search(rf"^(?:async\s+)?def\s+{re.escape(entry)}\s*\(", code, re.MULTILINE)
        source = (f"{prompt}\n{code}" if defines else prompt + code) + "\n"
        job = {"setup": prompt, "test": str(row["test"]), "entry_point": entry}
    names = free_names(job["setup"], job["test"]) | ({job["entry_point"]} if job["entry_point"] else set())
    return Program(_boot("server.py", {"source": source}), _boot("checker.py", {**job, "names": sorted(names)}))


def free_names(*sources: str) -> set[str]:
    """Names the row's code reads but never binds and no builtin has: the ones the program must give.

    Parsed here (parsing runs nothing), so the checker need not import `ast`. A row whose own code
    does not parse is the row's error (ValueError), not the response's failure.
    """
    read, bound = set(), set()
    for source in sources:
        try:
            tree = ast.parse(source)
        except SyntaxError as e:
            raise ValueError(f"the row's tests or setup code do not parse: {e}") from e
        for node in ast.walk(tree):
            if isinstance(node, ast.Name):
                (read if isinstance(node.ctx, ast.Load) else bound).add(node.id)
            elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                bound.add(node.name)
            elif isinstance(node, ast.arg):
                bound.add(node.arg)
            elif isinstance(node, ast.Import | ast.ImportFrom):
                bound.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ExceptHandler) and node.name:
                bound.add(node.name)
    return read - bound - set(dir(builtins))


def _boot(name: str, job: Mapping[str, Any]) -> str:
    wire, main = _harness("wire.py"), _harness(name)
    return _BOOT.format(wire=wire, main=main, name=name, job=dict(job))


@functools.cache
def _harness(name: str) -> str:
    return (_HARNESS / name).read_text()


def verdict_of(run: CheckedRun) -> Verdict:
    """What a checked run means for the row: passed only on the checker's keyed report."""
    if run.passed:
        return Verdict(True, "passed")
    program, report = run.program, run.report
    if report.startswith("failed: MemoryError"):
        return Verdict(False, "memory limit")
    if report and report != "ended":  # the checker's own word on what failed
        return Verdict(False, _short(report))
    if program.error:
        return Verdict(False, f"error: {program.error}")
    if (failure := failure_of(program)) is not None:
        return Verdict(False, failure)
    if run.checker.timed_out or run.checker.signal == signal.SIGXCPU:
        return Verdict(False, "timeout")
    if report == "ended":  # the program's process ended mid-tests: say how
        last = next((line for line in reversed(program.stderr.splitlines()) if line.strip()), "")
        if program.signal is not None:
            return Verdict(False, f"killed by signal {program.signal}")
        if program.returncode == 126 and last.startswith("sandbox:"):
            return Verdict(False, f"error: {last}")
        if program.returncode:
            return Verdict(False, f"failed: exit code {program.returncode}")
        return Verdict(False, "failed: the program exited before its tests finished")
    checker_last = next((line for line in reversed(run.checker.stderr.splitlines()) if line.strip()), "")
    return Verdict(False, _short(f"error: the checker gave no verdict ({run.checker.error or checker_last})"))


def failure_of(result: SandboxResult) -> str | None:
    """How the sandbox ended a program, where it did: `memory limit`, `timeout` or `output limit`."""
    last = next((line for line in reversed(result.stderr.splitlines()) if line.strip()), "")
    if result.memory_limited or last.startswith("MemoryError"):
        return "memory limit"
    if result.timed_out or result.signal == signal.SIGXCPU:
        return "timeout"
    if result.output_limited:
        return "output limit"
    return None


def _short(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def judge_programs(programs: Sequence[Program], timeout_s: float, memory_mb: int, num_workers: int) -> list[Verdict]:
    """Run each program in the sandbox, `num_workers` at a time.

    A pool of threads, not of processes: each program already runs in a process of its own, and a
    thread only starts it and waits on its pipes (the GIL is released), so threads give the same
    parallelism without forking a parent that may hold Ray, CUDA or a model.
    """

    limits = Limits(timeout_s=timeout_s, memory_mb=memory_mb)

    def one(program: Program) -> Verdict:
        try:
            run = run_checked(program.source, program.checker, limits)
        except OSError as e:  # the host could not start the jail (out of processes, disk): this row only
            return Verdict(False, f"error: sandbox could not start: {e}")
        _warn_if_weak(run.program.isolation)
        return verdict_of(run)

    if num_workers <= 1 or len(programs) <= 1:
        return [one(p) for p in programs]
    with ThreadPoolExecutor(max_workers=num_workers) as pool:
        return list(pool.map(one, programs))


def usable_cpus() -> int:
    """The CPUs this process may run on: a Slurm or container CPU set is often far smaller than the machine."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _warn_if_weak(isolation: tuple[str, ...]) -> None:
    missing = tuple(m for m in _WEAK if m not in isolation)
    if missing and isolation:
        _warn_once(missing, isolation)


@functools.cache
def _warn_once(missing: tuple[str, ...], isolation: tuple[str, ...]) -> None:
    log.warning(
        "code judge sandbox without %s on this host: see docs/sandbox.md (applied: %s)",
        ", ".join(missing), ", ".join(isolation),
    )  # fmt: skip


@register("code")
class CodeJudge(Judge):
    """Runs each row's program against its tests; `num_workers=0` means one per CPU this process may use.

    With a Ray cluster up (`ray.is_initialized()`), rows go out as Ray tasks over chunks so programs
    run on every node's CPUs; without one, a local pool of `num_workers` runs them. Both keep the
    same per-program sandbox, and a program's time in a queue never counts against its timeout.
    """

    required_fields = ("response",)
    runs_in_driver = True  # it spreads its own work (Ray tasks or a local pool)
    batches_at_once = 2  # a batch's slowest programs (timeouts) overlap with the next batch's

    def __init__(self, timeout_s: float = 10.0, memory_mb: int = 1024, num_workers: int = 0) -> None:
        self.timeout_s, self.memory_mb = float(timeout_s), int(memory_mb)
        self.num_workers = int(num_workers) or usable_cpus()
        self._lender: Lender | None = None

    def lend(self, lender: Lender | None) -> None:
        self._lender = lender

    def missing_fields(self, row: Mapping[str, Any]) -> Verdict | None:
        if (verdict := super().missing_fields(row)) is not None or row.get("test_list") is not None:
            return verdict
        missing = [f for f in ("test", "entry_point") if row.get(f) is None]
        return Verdict(False, f"error: missing field(s) {', '.join(missing)} (or test_list)") if missing else None

    def judge_row(self, row: Mapping[str, Any]) -> Verdict:
        return self.judge_batch([row])[0]

    def judge_batch(self, rows: Sequence[Mapping[str, Any]]) -> list[Verdict]:
        verdicts: list[Verdict | None] = [self.missing_fields(row) for row in rows]
        todo: list[tuple[int, Program]] = []
        for i, row in enumerate(rows):
            if verdicts[i] is None:
                try:
                    todo.append((i, build_program(row, extract_code(str(row["response"])))))
                except (TypeError, ValueError) as e:
                    verdicts[i] = Verdict(False, f"error: {e}")
        for (i, _), verdict in zip(todo, self._run([p for _, p in todo])):
            verdicts[i] = verdict
        return [v for v in verdicts if v is not None]

    def _run(self, programs: list[Program]) -> list[Verdict]:
        ray = sys.modules.get("ray")  # never imported here: a cluster is up only where ray already is
        if ray is None or not ray.is_initialized() or len(programs) <= 1:
            return judge_programs(programs, self.timeout_s, self.memory_mb, self.num_workers)
        size = math.ceil(len(programs) / (2 * max(1, lending.cpus(lending.borrow(self._lender)))))
        chunks = [programs[i : i + size] for i in range(0, len(programs), size)]
        return [v for chunk in self._run_chunks(ray, chunks) for v in chunk]

    def _run_chunks(self, ray: Any, chunks: list[list[Program]]) -> list[list[Verdict]]:
        """Each chunk as a Ray task, in the CPUs `lending.borrow` gives; a stranded one is sent again."""
        remote = ray.remote(num_cpus=1)(judge_programs)
        results: list[list[Verdict]] = [[] for _ in chunks]
        sent: dict[Any, tuple[int, lending.CpuSlot | None, int]] = {}  # ref: chunk, slot, attempt

        def start(n: int, attempt: int) -> None:
            ref, slot = lending.send(remote, self._lender, n, chunks[n], self.timeout_s, self.memory_mb, 1)
            sent[ref] = (n, slot, attempt)

        for n in range(len(chunks)):
            start(n, 1)
        while sent:
            done, _ = ray.wait(list(sent), num_returns=len(sent), timeout=lending.SLOT_CHECK_S)
            for ref in done:
                results[sent.pop(ref)[0]] = ray.get(ref)
            # Once a round per slot: for the tasks outside the groups (slot None) it asks the GCS.
            is_stranded = functools.cache(functools.partial(lending.stranded, self._lender))
            for ref, (n, slot, attempt) in list(sent.items()):
                if not is_stranded(slot):
                    continue
                if attempt == lending.SEND_ATTEMPTS:
                    raise S3FTError(f"code judge: a batch of programs found no CPU to run in {attempt} times")
                log.warning("code judge: a batch of programs is sent again: the CPU it waited for is gone")
                ray.cancel(ref, force=True)
                del sent[ref]
                start(n, attempt + 1)
        return results
