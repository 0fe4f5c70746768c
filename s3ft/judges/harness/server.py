"""The program's side of the code judge: runs the response's code and answers the checker's calls.

Runs inside the program's sandbox, in the same interpreter as the untrusted code, so nothing here
is trusted: the program may rewrite any of it, and the checker believes none of it beyond the
values it decodes (see checker.py). It only has to serve an honest program well.

Requests (fd 3) and replies (fd 4), one JSON line each (wire.py):
    ["load", [names]]            -> ["loaded", {name: value | ["module", name]}] | ["raise", ...]
    ["call", ref, [args], [kwargs]] -> ["ok", value] | ["raise", type, message, line, text]
    ["iter", ref]                -> ["ok", ["list", [items]]] | ["raise", ...]
The code is run only once "load" arrives, after the checker has sealed itself off.
"""

from __future__ import annotations

import os
import types

from wire import decode, encode, read_message, write_message  # a module of the sandbox's own (see code.py)

PLAIN_BASES = (int, float, complex, str, bytes, list, tuple, set, frozenset, dict)


class Server:
    def __init__(self, source: str) -> None:
        self.source = source
        self.namespace: dict[str, object] = {"__name__": "__program__", "__builtins__": __builtins__}
        self.objects: list[object] = []

    def out(self, value: object) -> object:
        """A subclass of a plain type goes as its base type's value (a Counter as a dict); any other
        object stays here and goes as a reference the checker can call or iterate."""
        for base in PLAIN_BASES:
            if isinstance(value, base):
                return encode(base(value), self.out)
        if isinstance(value, bytearray):
            return encode(bytes(value), self.out)
        self.objects.append(value)
        return ["ref", len(self.objects) - 1, type(value).__name__]

    def into(self, data: list) -> object:
        """A reference back to its object; an object of the tests' setup code rebuilt from its attributes."""
        if data[0] == "ref":
            return self.objects[data[1]]
        if data[0] == "obj":
            cls = self.namespace[data[1]]
            obj = cls.__new__(cls)
            obj.__dict__.update(decode(data[2], self.into))
            return obj
        raise ValueError(f"unknown tag {data[0]!r}")

    def load(self, names: list[str]) -> list:
        with open("program.py", "w", errors="replace") as f:  # so a traceback can show the program's lines
            f.write(self.source)
        exec(compile(self.source, os.path.abspath("program.py"), "exec"), self.namespace)  # noqa: S102  (sandboxed)
        found = {}
        for name in names:
            if name in self.namespace:
                value = self.namespace[name]
                found[name] = ["module", value.__name__] if isinstance(value, types.ModuleType) else encode(value, self.out)
        return ["loaded", found]

    def answer(self, request: list) -> list:
        op, ref = request[0], request[1]
        if op == "iter":
            return ["ok", encode(list(self.objects[ref]), self.out)]
        args, kwargs = decode(request[2], self.into), decode(request[3], self.into)
        return ["ok", encode(self.objects[ref](*args, **kwargs), self.out)]


def raised(error: BaseException) -> list:
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
    return ["raise", type(error).__name__, message, line, text[:200]]


def main(job: dict) -> None:
    requests, replies = os.fdopen(3, "rb"), os.fdopen(4, "wb")
    server = Server(job["source"])
    first = read_message(requests)
    if not first or first[0] != "load":
        return
    try:
        write_message(replies, server.load(first[1]))
    except BaseException as e:  # noqa: BLE001  (whatever the program does is the checker's to judge)
        write_message(replies, raised(e))
        return
    while (request := read_message(requests)) is not None:
        try:
            reply = server.answer(request)
        except BaseException as e:  # noqa: BLE001
            reply = raised(e)
        write_message(replies, reply)

