"""The program's side of the code judge: runs the response's code and answers the checker's calls.

Runs inside the program's sandbox, in the same interpreter as the untrusted code, so nothing here
is trusted: the program may rewrite any of it, and the checker believes none of it beyond the
values it decodes (see checker.py). It only has to serve an honest program well.

Requests (fd 3) and replies (fd 4), one line each (wire.py), as tuples:
    ("load", [names])           -> ("loaded", {name: value})   a module as `m<name>`
    ("call", ref, [args], {kw}) -> ("ok", value) | ("raise", type, message, line, text)
    ("iter", ref)               -> ("ok", [items]) | ("raise", ...)
The code is run only once "load" arrives, after the checker has sealed itself off.
"""

from __future__ import annotations

import os
import types

from wire import Reader, dump_into, dumps, loads, read_message, write_message  # the sandbox's own module (code.py)

PLAIN_BASES = (int, float, complex, str, bytes, list, tuple, set, frozenset, dict)


class Server:
    def __init__(self, source: str) -> None:
        self.source = source
        self.namespace: dict[str, object] = {"__name__": "__program__", "__builtins__": __builtins__}
        self.objects: list[object] = []

    def out(self, value: object, tokens: list[bytes]) -> None:
        """A subclass of a plain type goes as its base type's value (a Counter as a dict), a module as
        its name; any other object stays here and goes as a reference the checker can call or iterate."""
        if isinstance(value, types.ModuleType):
            tokens.append(b"m" + value.__name__.encode().hex().encode())
            return
        for base in PLAIN_BASES:
            if isinstance(value, base):
                dump_into(base(value), tokens, self.out)
                return
        if isinstance(value, bytearray):
            dump_into(bytes(value), tokens, self.out)
            return
        self.objects.append(value)
        tokens.append(b"r%x:%s" % (len(self.objects) - 1, type(value).__name__.encode().hex().encode()))

    def into(self, tag: bytes, payload: bytes, reader: Reader) -> object:
        """A reference back to its object; an object of the tests' setup code rebuilt from its attributes."""
        if tag == b"r":
            return self.objects[int(payload, 16)]
        if tag == b"o":
            cls = self.namespace[bytes.fromhex(payload.decode()).decode()]
            obj = cls.__new__(cls)
            obj.__dict__.update(reader.value())
            return obj
        raise ValueError(f"unknown tag {tag!r}")

    def load(self, names: list[str]) -> bytes:
        with open("program.py", "w", errors="replace") as f:  # so a traceback can show the program's lines
            f.write(self.source)
        exec(compile(self.source, os.path.abspath("program.py"), "exec"), self.namespace)  # noqa: S102  (sandboxed)
        return dumps(("loaded", {name: self.namespace[name] for name in names if name in self.namespace}), self.out)

    def answer(self, request: tuple) -> bytes:
        op, ref = request[0], request[1]
        if op == "iter":
            return dumps(("ok", list(self.objects[ref])), self.out)
        return dumps(("ok", self.objects[ref](*request[2], **request[3])), self.out)


def raised(error: BaseException) -> bytes:
    """The error as the checker's reason shows it: type, message, and the program's line it came from."""
    line, text, message = 0, "", None
    if isinstance(error, SyntaxError) and error.filename and error.filename.endswith("program.py"):
        line, text, message = error.lineno or 0, (error.text or "").strip(), str(error.msg)
    else:
        import traceback  # only on this path: start-up time counts twice per row

        frames = [f for f in traceback.extract_tb(error.__traceback__) if f.filename.endswith("program.py")]
        if frames:
            line, text = frames[-1].lineno or 0, (frames[-1].line or "").strip()
    try:
        message = (str(error) if message is None else message)[:300]
    except BaseException:  # noqa: BLE001  (a program's exception may fail to print)
        message = ""
    return dumps(("raise", type(error).__name__, message, line, text[:200]), None)


def main(job: dict) -> None:
    requests, replies = os.fdopen(3, "rb"), os.fdopen(4, "wb")
    server = Server(job["source"])
    line = read_message(requests)
    first = loads(line, None) if line is not None else None
    if type(first) is not tuple or first[0] != "load":
        return
    try:
        write_message(replies, server.load(first[1]))
    except BaseException as e:  # noqa: BLE001  (whatever the program does is the checker's to judge)
        write_message(replies, raised(e))
        return
    while (line := read_message(requests)) is not None:
        try:
            reply = server.answer(loads(line, server.into))
        except BaseException as e:  # noqa: BLE001
            reply = raised(e)
        write_message(replies, reply)
