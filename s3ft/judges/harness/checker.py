"""The trusted side of the code judge: runs the row's tests, and alone can report that they passed.

It runs in a sandbox of its own, apart from the program's (another process, pid namespace and uid;
see docs/sandbox.md), with four descriptors from the judge:
    3  requests to the program      4  replies from the program (server.py answers)
    5  this run's key, from the judge, read once      6  the verdict, to the judge
The tests (HumanEval `check`, MBPP asserts, their setup code) run here, in this interpreter, and
never in the program's. Each name the tests use that the program defines comes from the program:
its functions and objects as references whose calls go over the pipes, plain values rebuilt by
wire.py as exact built-in types. So the program can answer calls with values, and nothing else:
it cannot touch `assert`, the builtins, the test functions or this file, and it never sees the key.
Only after the tests returned does this write `pass KEY` on fd 6; any error writes `fail REASON`.
"""

from __future__ import annotations

import builtins
import ctypes
import importlib
import os
import sys

from wire import Reader, WireError, dump_into, dumps, loads, read_message, write_message  # the sandbox's own module

PR_SET_DUMPABLE = 4
TEST_FILE = "test.py"
SETUP_FILE = "setup.py"
TEST_MODULE = "__test__"  # the __module__ of classes the setup code defines: their objects may be sent


class ProgramGone(Exception):
    """The program ended, or broke the protocol: no further call can be answered."""


class ProgramRaised(Exception):
    """The program raised an exception that is not one of the builtins (or SystemExit)."""


class Remote:
    """A function or object of the program: calling or iterating it asks the program; it equals
    nothing but itself, and has no truth value, no arithmetic, no attributes."""

    __slots__ = ("_kind", "_program", "_ref")

    def __init__(self, program: Program, ref: int, kind: str) -> None:
        self._program, self._ref, self._kind = program, ref, kind

    def __call__(self, *args: object, **kwargs: object) -> object:
        return self._program.ask(("call", self._ref, list(args), kwargs))

    def __iter__(self) -> object:
        return iter(self._program.ask(("iter", self._ref)))

    def __bool__(self) -> bool:  # an object of the program is no answer to `assert candidate(x)`
        raise TypeError(f"{self!r} has no truth value in a test: return a plain value")

    def __repr__(self) -> str:
        return f"<the program's {self._kind[:40]}>"


class ModuleName:
    """A module the program imported, named in its answer to "load" (and only there)."""

    def __init__(self, name: str) -> None:
        self.name = name


class Program:
    """The program at the end of two pipes; once it is gone (or broke the format) it stays gone."""

    def __init__(self) -> None:
        self.requests, self.replies = os.fdopen(3, "wb"), os.fdopen(4, "rb")
        self.gone: str | None = None
        self.loading = False

    def _out(self, value: object, tokens: list[bytes]) -> None:
        if isinstance(value, Remote) and value._program is self:
            tokens.append(b"r%x" % value._ref)
        elif type(value).__module__ == TEST_MODULE and hasattr(value, "__dict__"):
            tokens.append(b"o" + type(value).__name__.encode().hex().encode())
            dump_into(dict(vars(value)), tokens, self._out)
        else:
            raise TypeError(f"a {type(value).__name__} cannot be passed to the program")

    def _in(self, tag: bytes, payload: bytes, reader: Reader) -> object:
        text = payload.decode("ascii")
        if tag == b"r":
            ref, kind = text.split(":")
            return Remote(self, int(ref, 16), bytes.fromhex(kind).decode())
        if tag == b"m" and self.loading:
            return ModuleName(bytes.fromhex(text).decode())
        raise WireError(f"unknown tag {tag[:1]!r}")

    def _broken(self, why: str) -> ProgramGone:
        self.gone = why
        return ProgramGone(why)

    def exchange(self, request: tuple) -> tuple:
        """Send one request and read its reply: ("ok", value), ("loaded", {...}); ("raise", ...) raises."""
        if self.gone is not None:
            raise ProgramGone(self.gone)
        line = dumps(request, self._out)  # a TypeError here is the test's: it passed what cannot go
        try:
            write_message(self.requests, line)
            answer = read_message(self.replies)
            reply = loads(answer, self._in) if answer is not None else None
        except WireError as e:
            raise self._broken(f"the program's reply is not valid: {e}") from e
        except OSError as e:
            raise self._broken("ended") from e
        if reply is None:
            raise self._broken("ended")
        if type(reply) is not tuple or not reply or reply[0] not in ("ok", "loaded", "raise"):
            raise self._broken("the program's reply is not valid")
        if reply[0] == "raise":
            raise self._raised(reply)
        return reply

    def ask(self, request: tuple) -> object:
        reply = self.exchange(request)
        if reply[0] != "ok" or len(reply) != 2:
            raise self._broken("the program's reply is not valid")
        return reply[1]

    def load(self, names: list[str]) -> dict[str, object]:
        """Run the program's code and fetch the values of `names` it defines (modules as stdlib imports)."""
        self.loading = True
        try:
            reply = self.exchange(("load", names))
        finally:
            self.loading = False
        if reply[0] != "loaded" or len(reply) != 2 or type(reply[1]) is not dict:
            raise self._broken("the program's reply is not valid")
        found = {}
        for name, value in reply[1].items():
            if name not in names:
                continue
            if isinstance(value, ModuleName):
                if value.name == name and name in sys.stdlib_module_names:  # `math` means math, ours
                    found[name] = importlib.import_module(name)
            elif not _holds(value, ModuleName):
                found[name] = value
        return found

    def _raised(self, reply: tuple) -> BaseException:
        """The program's exception as one of ours: the builtin of that name where there is one."""
        fields = reply[1:]
        if len(fields) != 4 or [type(f) for f in fields] != [str, str, int, str]:
            return self._broken("the program's reply is not valid")
        name, message, line, text = fields
        if name in ("SyntaxError", "IndentationError", "TabError") and line:
            reason = f"syntax error: {message} (line {line})"
        elif name == "SystemExit":
            reason = "failed: the program exited before its tests finished"
        else:
            head = f"{name}: {message}" if message else name
            reason = f"failed: {head[:100]}" + (f" (line {line}: {text})" if line else "")
        cls = getattr(builtins, name, None)
        error: BaseException = ProgramRaised(message)
        if isinstance(cls, type) and issubclass(cls, Exception):
            try:
                error = cls(message)
            except Exception:  # noqa: BLE001  (a builtin that wants other arguments)
                error = ProgramRaised(message)
        error.program_reason = reason  # type: ignore[attr-defined]
        return error


def _holds(value: object, kind: type) -> bool:
    """Whether a decoded value has an object of `kind` anywhere inside (a module nested in a list)."""
    if isinstance(value, kind):
        return True
    if isinstance(value, dict):
        return any(_holds(k, kind) or _holds(v, kind) for k, v in value.items())
    if isinstance(value, list | tuple | set | frozenset):
        return any(_holds(item, kind) for item in value)
    return False


def run_tests(job: dict, program: Program) -> None:
    """Setup code (MBPP) or prompt (HumanEval: its helpers, never the program's), the names the
    tests need from the program (code.py's `free_names`), then the tests; `check(candidate)` last."""
    namespace: dict[str, object] = {"__name__": TEST_MODULE}
    setup, test, entry = job["setup"], job["test"], job["entry_point"]
    exec(compile(setup, SETUP_FILE, "exec"), namespace)  # noqa: S102  (the row's own code, in the checker's sandbox)
    code = compile(test, TEST_FILE, "exec")
    found = program.load(job["names"])
    if entry and entry not in found:
        raise NameError(f"the program defines no {entry}")
    namespace.update(found)
    exec(code, namespace)  # noqa: S102
    if entry:
        namespace["check"](namespace[entry])


def reason_of(error: BaseException | None, program: Program, test: str) -> str:
    """Why the tests did not pass, as the judge's reason ("ended" lets the judge say how the program ended)."""
    if program.gone == "ended":
        return "ended"
    if program.gone is not None:
        return f"failed: {program.gone}"
    if error is None:
        return "failed: no error"
    reason = getattr(error, "program_reason", None)
    if isinstance(reason, str):
        return reason
    import linecache  # only on this path: start-up time counts twice per row
    import traceback

    linecache.cache[TEST_FILE] = (0, None, test.splitlines(True), TEST_FILE)
    frames = [f for f in traceback.extract_tb(error.__traceback__) if f.filename == TEST_FILE]
    where = f" (test line {frames[-1].lineno}: {(frames[-1].line or '').strip()})" if frames else ""
    message = str(error)
    head = f"{type(error).__name__}: {message}" if message else type(error).__name__
    return f"failed: {head[:100]}{where}"


def main(job: dict) -> None:
    ctypes.CDLL(None).prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)  # no ptrace, no /proc/PID/{fd,mem} for same-uid peers
    key = os.read(5, 256).decode().strip()
    os.close(5)
    program = Program()
    error: BaseException | None = None
    try:
        run_tests(job, program)
    except BaseException as e:  # noqa: BLE001  (any way the tests end early is a failure)
        error = e
    passed = error is None and program.gone is None
    line = f"pass {key}" if passed else f"fail {reason_of(error, program, job['test'])}"
    os.write(6, (" ".join(line.split())[:1000] + "\n").encode())
