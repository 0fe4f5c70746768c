"""The one format values cross in between the program and the checker: plain types, one line each.

Both sides of the code judge run this file (it is copied into each sandbox), and the checker reads
the program's replies with it. Why not pickle or marshal: both build arbitrary objects, or may
crash on crafted bytes. Here a value is rebuilt from a closed grammar, so what the checker holds
is an exact `int`, `str`, `list`, ... of its own: no `__eq__` of the program's making can come along.
Why not JSON: importing `json` (and `re` with it) costs as much CPU as starting Python, paid by
both sides of every judged row.

A message is one line of space-separated tokens in prefix order; every payload is hex, so no
token holds a space or a newline:

    N T F                       None, True, False
    i-1f  f0x1.8p+1  c<re>,<im>  int (hex: no digit limit), float (float.hex: exact, nan, inf), complex
    s<utf-8 hex>  b<hex>         str (lone surrogates kept), bytes
    l<n> t<n> S<n> z<n>          list, tuple, set, frozenset: n values follow
    d<n>                         dict: n keys and values follow, alternating
    q<num>/<den>  D<ascii hex>   fractions.Fraction, decimal.Decimal

Any other tag goes to the side's own hooks: the program's functions and objects travel as
references (`r`), never as themselves. `fractions` and `decimal` are imported only when a value
needs them.

>>> dumps({"a": (1, 2.5)}, other=None)
b'd1 s61 t2 i1 f0x1.4000000000000p+1'
>>> loads(b'd1 s61 t2 i1 f0x1.4000000000000p+1', other=None)
{'a': (1, 2.5)}
"""

from __future__ import annotations

import io
import sys

TYPE_CHECKING = False  # typing and collections.abc cost start-up time at run time: annotations only
if TYPE_CHECKING:
    from collections.abc import Callable

MAX_MESSAGE = 64 << 20  # bytes in one message; a longer one is refused, not read into memory
MAX_DEPTH = 100  # nested containers in one value (each level costs the reader a few Python frames)
SEQUENCES = {b"l": list, b"t": tuple, b"S": set, b"z": frozenset}
TAGS = {list: "l", tuple: "t", set: "S", frozenset: "z"}


class WireError(ValueError):
    """A message that is not a value of the grammar above."""


def dumps(value: object, other: Callable[[object, list[bytes]], None] | None) -> bytes:
    """`value` as one line (without its newline); `other(value, tokens)` appends the tokens of a value
    that is not plain (exact types only: a subclass of int is not an int here)."""
    tokens: list[bytes] = []
    dump_into(value, tokens, other)
    return b" ".join(tokens)


def dump_into(value: object, tokens: list[bytes], other: Callable[[object, list[bytes]], None] | None) -> None:
    kind = type(value)
    if value is None or kind is bool:
        tokens.append(b"N" if value is None else b"T" if value else b"F")
    elif kind is int:
        tokens.append(b"i%x" % value)
    elif kind is float:
        tokens.append(b"f" + value.hex().encode())
    elif kind is complex:
        tokens.append(b"c%s,%s" % (value.real.hex().encode(), value.imag.hex().encode()))
    elif kind is str:
        tokens.append(b"s" + value.encode("utf-8", "surrogatepass").hex().encode())
    elif kind is bytes:
        tokens.append(b"b" + value.hex().encode())
    elif kind in TAGS:
        tokens.append(b"%s%d" % (TAGS[kind].encode(), len(value)))
        for item in value:
            dump_into(item, tokens, other)
    elif kind is dict:
        tokens.append(b"d%d" % len(value))
        for k, v in value.items():
            dump_into(k, tokens, other)
            dump_into(v, tokens, other)
    elif _is(kind, "fractions", "Fraction"):
        tokens.append(b"q%x/%x" % (value.numerator, value.denominator))
    elif _is(kind, "decimal", "Decimal"):
        tokens.append(b"D" + str(value).encode().hex().encode())
    elif other is not None:
        other(value, tokens)
    else:
        raise TypeError(f"a {kind.__name__} is not a plain value")


def _is(kind: type, module: str, name: str) -> bool:
    """Whether `kind` is that class, without importing its module (a value of it means it is imported)."""
    loaded = sys.modules.get(module)
    return loaded is not None and getattr(loaded, name, None) is kind


class Reader:
    """Reads one message's tokens back into values; `other(tag, payload, reader)` reads a tag of the side's own."""

    def __init__(self, line: bytes, other: Callable[[bytes, bytes, Reader], object] | None) -> None:
        self.tokens, self.at, self.other, self.depth = line.split(b" "), 0, other, 0

    def value(self) -> object:
        if self.at >= len(self.tokens):
            raise WireError("message ends inside a value")
        token = self.tokens[self.at]
        self.at += 1
        tag, payload = token[:1], token[1:]
        try:
            return self._value(tag, payload)
        except (ValueError, TypeError, ArithmeticError, UnicodeError) as e:  # decimal's errors are Arithmetic
            if isinstance(e, WireError):
                raise
            raise WireError(f"bad token {token[:40]!r}: {type(e).__name__}") from e

    def _value(self, tag: bytes, payload: bytes) -> object:
        if tag in (b"N", b"T", b"F") and not payload:
            return None if tag == b"N" else tag == b"T"
        if tag == b"i":
            return int(payload, 16)
        if tag == b"f":
            return float.fromhex(payload.decode("ascii"))
        if tag == b"c":
            real, imag = payload.split(b",")
            return complex(float.fromhex(real.decode("ascii")), float.fromhex(imag.decode("ascii")))
        if tag == b"s":
            return bytes.fromhex(payload.decode("ascii")).decode("utf-8", "surrogatepass")
        if tag == b"b":
            return bytes.fromhex(payload.decode("ascii"))
        if tag in SEQUENCES or tag == b"d":
            return self._container(tag, int(payload))
        if tag == b"q":
            import fractions

            num, den = payload.split(b"/")
            return fractions.Fraction(int(num, 16), int(den, 16))
        if tag == b"D":
            import decimal

            return decimal.Decimal(bytes.fromhex(payload.decode("ascii")).decode("ascii"))
        if self.other is not None:
            return self.other(tag, payload, self)
        raise WireError(f"unknown tag {tag!r}")

    def _container(self, tag: bytes, n: int) -> object:
        items = 2 * n if tag == b"d" else n
        if n < 0 or items > len(self.tokens) - self.at:
            raise WireError(f"a container of {n} items in a message that holds fewer")
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise WireError("value nested too deep")
        values = [self.value() for _ in range(items)]
        self.depth -= 1
        if tag == b"d":
            return dict(zip(values[::2], values[1::2], strict=True))  # an unhashable key: TypeError
        return SEQUENCES[tag](values)

    def done(self) -> None:
        if self.at != len(self.tokens):
            raise WireError("tokens left after the message")


def loads(line: bytes, other: Callable[[bytes, bytes, Reader], object] | None) -> object:
    """The one value `line` holds. Raises WireError for anything outside the grammar."""
    reader = Reader(line, other)
    try:
        value = reader.value()
    except RecursionError as e:
        raise WireError("value nested too deep") from e
    reader.done()
    return value


def write_message(stream: io.BufferedIOBase, line: bytes) -> None:
    stream.write(line + b"\n")
    stream.flush()


def read_message(stream: io.BufferedIOBase) -> bytes | None:
    """The next line, without its newline; None at the end of the stream. Raises WireError for a
    line cut short or longer than MAX_MESSAGE."""
    line = stream.readline(MAX_MESSAGE + 1)
    if not line:
        return None
    if not line.endswith(b"\n"):
        raise WireError("message cut short or longer than the limit")
    return line[:-1]
