"""The one format values cross in between the program and the checker: tagged JSON of plain types.

Both sides of the code judge run this file (it is copied into each sandbox), and the checker reads
the program's replies with it. Why not pickle or marshal: both build arbitrary objects, or crash
on crafted bytes. Here a value is rebuilt from a closed grammar, so what the checker holds is an
exact `int`, `str`, `list`, ... of its own: no `__eq__` of the program's making can come along.

    None, True, False          as JSON
    ["int", "0x1f"]            hex, so no digit limit applies; ["float", "0x1.8p+1"] (float.hex: exact, nan, inf)
    ["complex", re, im]        each a float.hex
    ["str", s]  ["bytes", "00ff"]
    ["list" | "tuple" | "set" | "frozenset", [items]]   ["dict", [[key, value], ...]]
    ["fraction", num, den]     hex ints; ["decimal", "1.50"]

Any other tag goes to the side's own `other` hook: the program's functions and objects travel as
references (`["ref", n, type name]`), never as themselves. `fractions` and `decimal` are imported
only when a value needs them: every import is start-up time, paid twice per judged row.

>>> encode({"a": (1, 2.5)}, other=repr)
['dict', [[['str', 'a'], ['tuple', [['int', '0x1'], ['float', '0x1.4000000000000p+1']]]]]]
>>> decode(encode({"a": (1, 2.5)}, other=repr), other=print)
{'a': (1, 2.5)}
"""

from __future__ import annotations

import io
import json
import sys
from collections.abc import Callable

MAX_MESSAGE = 64 << 20  # bytes in one message; a longer one is refused, not read into memory
SEQUENCES: dict[str, type] = {"list": list, "tuple": tuple, "set": set, "frozenset": frozenset}


class WireError(ValueError):
    """A message that is not a value of the grammar above."""


def encode(value: object, other: Callable[[object], object]) -> object:
    """`value` as JSON-able data; `other(value)` encodes what is not a plain value (exact types only)."""
    kind = type(value)
    if value is None or kind is bool:
        return value
    if kind is int:
        return ["int", hex(value)]
    if kind is float:
        return ["float", value.hex()]
    if kind is complex:
        return ["complex", value.real.hex(), value.imag.hex()]
    if kind is str:
        return ["str", value]
    if kind is bytes:
        return ["bytes", value.hex()]
    if kind in (list, tuple, set, frozenset):
        return [kind.__name__, [encode(item, other) for item in value]]
    if kind is dict:
        return ["dict", [[encode(k, other), encode(v, other)] for k, v in value.items()]]
    if _is(kind, "fractions", "Fraction"):
        return ["fraction", hex(value.numerator), hex(value.denominator)]
    if _is(kind, "decimal", "Decimal"):
        return ["decimal", str(value)]
    return other(value)


def _is(kind: type, module: str, name: str) -> bool:
    """Whether `kind` is that class, without importing its module (a value of it means it is imported)."""
    loaded = sys.modules.get(module)
    return loaded is not None and getattr(loaded, name, None) is kind


def decode(data: object, other: Callable[[list], object]) -> object:
    """The value `data` encodes, built from exact built-in types; `other(data)` for tags of its own.

    Raises WireError for anything outside the grammar (a bare number, a wrong payload, an
    unhashable set item or key, nesting too deep for the interpreter).
    """
    try:
        return _decode(data, other)
    except RecursionError as e:
        raise WireError("value nested too deep") from e


def _decode(data: object, other: Callable[[list], object]) -> object:
    if data is None or data is True or data is False:
        return data
    if type(data) is not list or not data or type(data[0]) is not str:
        raise WireError(f"not a tagged value: {_show(data)}")
    tag, args = data[0], data[1:]
    if tag in ("int", "float", "str", "bytes", "decimal") and (len(args) != 1 or type(args[0]) is not str):
        raise WireError(f"{tag} wants one string: {_show(data)}")
    try:
        if tag == "int":
            return _int(args[0])
        if tag == "float":
            return float.fromhex(args[0])
        if tag == "str":
            return args[0]
        if tag == "bytes":
            return bytes.fromhex(args[0])
        if tag == "decimal":
            import decimal

            return decimal.Decimal(args[0])
        if tag == "complex" and len(args) == 2 and all(type(a) is str for a in args):
            return complex(float.fromhex(args[0]), float.fromhex(args[1]))
        if tag == "fraction" and len(args) == 2 and all(type(a) is str for a in args):
            import fractions

            return fractions.Fraction(_int(args[0]), _int(args[1]))
        if tag in SEQUENCES and len(args) == 1 and type(args[0]) is list:
            return SEQUENCES[tag](_decode(item, other) for item in args[0])
        if tag == "dict" and len(args) == 1 and type(args[0]) is list:
            pairs = [_pair(item) for item in args[0]]
            return {_decode(k, other): _decode(v, other) for k, v in pairs}
    except (ValueError, TypeError, ArithmeticError) as e:  # decimal's InvalidOperation is an ArithmeticError
        if isinstance(e, WireError):
            raise
        raise WireError(f"bad {tag}: {type(e).__name__}: {e}") from e
    if tag in ("complex", "fraction", "dict", *SEQUENCES):
        raise WireError(f"bad {tag}: {_show(data)}")
    return other(data)


def _int(text: str) -> int:
    if type(text) is not str or not text.lstrip("-").startswith("0x"):
        raise WireError(f"not a hex int: {_show(text)}")
    return int(text, 16)


def _pair(item: object) -> list:
    if type(item) is not list or len(item) != 2:
        raise WireError(f"not a key/value pair: {_show(item)}")
    return item


def _show(data: object) -> str:
    text = repr(data)
    return text if len(text) <= 80 else text[:77] + "..."


def write_message(stream: io.BufferedIOBase, message: object) -> None:
    """One message as one line of JSON (JSON never holds a raw newline)."""
    stream.write(json.dumps(message, ensure_ascii=True, separators=(",", ":"), allow_nan=False).encode() + b"\n")
    stream.flush()


def read_message(stream: io.BufferedIOBase) -> object:
    """The next message; None at the end of the stream. Raises WireError for a cut, long or bad line."""
    line = stream.readline(MAX_MESSAGE + 1)
    if not line:
        return None
    if not line.endswith(b"\n"):
        raise WireError("message cut short or longer than the limit")
    try:
        return json.loads(line, parse_constant=_no_constant)
    except (ValueError, RecursionError) as e:
        raise WireError(f"not JSON: {type(e).__name__}") from e


def _no_constant(name: str) -> None:
    raise WireError(f"{name} is not JSON")
