"""The `code` judge: a response is correct when its program passes the row's tests in the sandbox.

Rows are HumanEval-style (`prompt`, `test`, `entry_point`: the tests define `check(candidate)`) or
MBPP-style (`test_list` of assert lines, optional `test_setup_code`). The program is taken from the
response (`extract_code`), joined with the tests (`build_program`) and run by `s3ft.sandbox`, one
fresh process per row; the reason names what happened: `passed`, `syntax error: ...`,
`failed: ...`, `timeout`, `memory limit`, `output limit`, `killed by signal N`, `error: ...`.
"""

from __future__ import annotations

import ast
import functools
import logging
import math
import os
import re
import secrets
import signal
import sys
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from s3ft.judges.base import Judge, Verdict, register
from s3ft.sandbox import SandboxResult, run_program

log = logging.getLogger(__name__)

_FENCE = re.compile(r"```[ \t]*([\w+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)
_PYTHON_TAGS = ("python", "python3", "py")
_PROGRAM_LINE = re.compile(r'File "[^"]*/program\.py", line (\d+)[^\n]*\n(?:    ([^\n]*)\n)?')
_WEAK = ("pid-ns", "net-ns", "read-only-fs")  # without these the sandbox is a documented fallback: say so once
# The program runs under exec with its own globals, as the HumanEval harness does, so a response's
# `if __name__ == "__main__":` demo is not run; it is written to program.py first so a traceback
# shows its lines. The last line proves the tests ran to their end (an early exit(0) does not pass).
_HARNESS = """import os, sys
source = {source!r}
with open("program.py", "w", errors="replace") as f:
    f.write(source)
program = compile(source, os.path.abspath("program.py"), "exec")
exec(program, {{"__name__": "__program__", "__builtins__": __builtins__}})
sys.stdout.flush()
os.write(1, b"{nonce}\\n")
"""


@dataclass(frozen=True)
class Program:
    """A program ready for the sandbox, and the line it prints only once all its tests have passed."""

    source: str
    nonce: str


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
    """The response's code joined with the row's tests, wrapped in the harness.

    HumanEval: prompt + completion + test + `check(entry_point)`; a response that writes the whole
    `def entry_point` comes after the prompt instead of completing it, so the prompt's imports and
    helpers still stand and the response's definition replaces the prompt's stub. MBPP: setup code,
    the code, then each assert.
    """
    if row.get("test_list") is not None:
        tests = row["test_list"]
        if not isinstance(tests, list) or not all(isinstance(t, str) for t in tests):
            raise ValueError("test_list is not a list of strings")
        source = "\n".join([str(row.get("test_setup_code") or ""), code, *tests]) + "\n"
    else:
        entry, prompt = str(row["entry_point"]), str(row.get("prompt") or "")
        defines = re.search(rf"^(?:async\s+)?def\s+{re.escape(entry)}\s*\(", code, re.MULTILINE)
        body = f"{prompt}\n{code}" if defines else prompt + code
        source = f"{body}\n\n{row['test']}\n\ncheck({entry})\n"
    nonce = secrets.token_hex(16)
    return Program(_HARNESS.format(source=source, nonce=nonce), nonce)


def verdict_of(result: SandboxResult, nonce: str) -> Verdict:
    """What a sandbox run means for the row."""
    last = next((line for line in reversed(result.stderr.splitlines()) if line.strip()), "")
    if result.error:
        return Verdict(False, f"error: {result.error}")
    if result.memory_limited or last.startswith("MemoryError"):
        return Verdict(False, "memory limit")
    if result.timed_out or result.signal == signal.SIGXCPU:
        return Verdict(False, "timeout")
    if result.output_limited:
        return Verdict(False, "output limit")
    if result.returncode == 0 and nonce in result.stdout:
        return Verdict(True, "passed")
    if result.signal is not None:
        return Verdict(False, f"killed by signal {result.signal}")
    if result.returncode == 126 and last.startswith("sandbox:"):
        return Verdict(False, f"error: {last}")
    if result.returncode == 0:
        return Verdict(False, "failed: the program exited before its tests finished")
    if "Traceback (most recent call last)" not in result.stderr:
        return Verdict(False, f"failed: exit code {result.returncode}")
    where = _PROGRAM_LINE.findall(result.stderr)  # frames in the program: the last is where it failed
    if last.startswith(("SyntaxError", "IndentationError", "TabError")):
        message = last.split(":", 1)[-1].strip()
        return Verdict(False, _short(f"syntax error: {message}" + (f" (line {where[-1][0]})" if where else "")))
    at = f" (line {where[-1][0]}: {where[-1][1].strip()})" if where else ""
    return Verdict(False, _short(f"failed: {_short(last, 100)}{at}"))


def _short(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def judge_programs(programs: Sequence[Program], timeout_s: float, memory_mb: int, num_workers: int) -> list[Verdict]:
    """Run each program in the sandbox, `num_workers` at a time.

    A pool of threads, not of processes: each program already runs in a process of its own, and a
    thread only starts it and waits on its pipes (the GIL is released), so threads give the same
    parallelism without forking a parent that may hold Ray, CUDA or a model.
    """

    def one(program: Program) -> Verdict:
        try:
            result = run_program(program.source, timeout_s=timeout_s, memory_mb=memory_mb)
        except OSError as e:  # the host could not start the jail (out of processes, disk): this row only
            return Verdict(False, f"error: sandbox could not start: {e}")
        _warn_if_weak(result.isolation)
        return verdict_of(result, program.nonce)

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
        tasks = 2 * max(1, int(ray.cluster_resources().get("CPU", 1)))
        size = math.ceil(len(programs) / tasks)
        remote = ray.remote(num_cpus=1)(judge_programs)
        chunks = [programs[i : i + size] for i in range(0, len(programs), size)]
        refs = [remote.remote(chunk, self.timeout_s, self.memory_mb, 1) for chunk in chunks]
        return [v for chunk in ray.get(refs) for v in chunk]
