"""A program and the trusted checker that tests it, each in a sandbox of its own, joined by two pipes.

The code judge's pass must be evidence the program cannot make (docs/sandbox.md, "The verdict").
The program's sandbox gets a request pipe and a reply pipe, nothing else; the checker's sandbox gets
their other ends, a pipe carrying a fresh random key, and the verdict pipe, which only the checker
and this process hold. The run passed only when the verdict pipe carries `pass KEY` with this
run's key: the key exists in this process and in the checker alone, never in a file, an argument,
the environment, or anywhere in the program's sandbox.
"""

from __future__ import annotations

import hmac
import os
import secrets
import threading
from dataclasses import dataclass
from typing import Self

from s3ft.sandbox.runner import Limits, SandboxResult, sandbox

CHECKER_GRACE_S = 5.0  # the checker outlives the program's deadline by this much, to report on it


@dataclass(frozen=True)
class CheckedRun:
    program: SandboxResult
    checker: SandboxResult
    passed: bool  # the checker reported, with this run's key, that every test ran and passed
    report: str  # the checker's failure reason ("" when it passed or said nothing)


def run_checked(program: str, checker: str, limits: Limits) -> CheckedRun:
    """Run `program` (fds 3: requests in, 4: replies out) and `checker` (3: requests out, 4: replies
    in, 5: the key, 6: the verdict) side by side under the same limits; the checker gets
    `CHECKER_GRACE_S` more time so that a program's timeout is reported, not shared.

    Raises OSError only when the host cannot start a sandbox.
    """
    key = secrets.token_hex(32)
    checker_limits = Limits(**{**limits.__dict__, "timeout_s": limits.timeout_s + CHECKER_GRACE_S})
    with _Pipes() as pipes, sandbox(program, limits) as prog, sandbox(checker, checker_limits) as check:
        (req_r, req_w), (rep_r, rep_w), (key_r, key_w) = pipes.new(), pipes.new(), pipes.new()
        (verdict_r, verdict_w), (stop_prog_r, stop_prog_w), (stop_check_r, stop_check_w) = (pipes.new() for _ in "vpc")
        os.write(key_w, key.encode() + b"\n")
        pipes.close(key_w)
        prog.start((req_r, rep_w))
        check.start((req_w, rep_r, key_r, verdict_w))
        pipes.close(req_r, rep_w, req_w, rep_r, key_r, verdict_w)  # only the jails hold these now

        def pump_checker() -> None:
            try:
                check.pump({verdict_r: "verdict"}, stop=stop_check_r)
            finally:
                os.write(stop_prog_w, b"x")  # the tests are over: the program has nothing left to do

        thread = threading.Thread(target=pump_checker, name="s3ft-checker", daemon=True)
        thread.start()
        try:
            prog.pump(stop=stop_prog_r)
        except BaseException:
            os.write(stop_check_w, b"x")  # the judge is interrupted: stop waiting for the checker
            raise
        finally:
            thread.join()
        verdict = check.out["verdict"].decode("utf-8", "replace").splitlines()
        passed = any(hmac.compare_digest(line.encode(), f"pass {key}".encode()) for line in verdict)
        report = next((line[5:] for line in verdict if line.startswith("fail ")), "")
        return CheckedRun(prog.result(), check.result(), passed, "" if passed else report)


class _Pipes:
    """The pipes of one run, each end closed exactly once (a second close could hit another thread's fd)."""

    def __init__(self) -> None:
        self.open: set[int] = set()

    def new(self) -> tuple[int, int]:
        r, w = os.pipe()
        self.open.update((r, w))
        return r, w

    def close(self, *fds: int) -> None:
        for fd in fds:
            self.open.remove(fd)
            os.close(fd)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close(*list(self.open))
