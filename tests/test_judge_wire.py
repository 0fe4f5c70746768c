"""The code judge's wire format: plain values go through exactly, anything else is refused.

The checker rebuilds the program's answers with `loads`; these tests hold it to its grammar: every
plain value round-trips as the same exact type, and a line the program crafted (unknown tags,
lying counts, deep nesting, unhashable keys, trailing tokens) is a WireError, never a value.
"""

from __future__ import annotations

import io
import math
from collections import Counter, OrderedDict
from decimal import Decimal
from fractions import Fraction

import pytest

from s3ft.judges.harness.wire import MAX_DEPTH, WireError, dumps, loads, read_message, write_message

PLAIN = [
    None, True, False, 0, -31, 2**20000, -(2**70), 0.5, -0.0, float("inf"), 1e-310, 1 + 2j, "", "café \ud800 \n",
    b"", b"\x00\xff", [], (), set(), frozenset(), {}, [1, [2, (3, {4: "x"})]], {(1, 2): {"k": [None]}},
    {3, "a", (1,)}, frozenset({b"z"}), Fraction(3, 2), Decimal("1.50"), Decimal("-Infinity"),
]  # fmt: skip


def exact(a: object, b: object) -> bool:
    """Equal and of the same types all the way down (== alone says 1 == 1.0 == True)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(exact(x, y) for x, y in zip(a, b, strict=True))  # type: ignore[arg-type]
    if isinstance(a, dict):
        return list(a) == list(b) and all(exact(a[k], b[k]) for k in a)  # type: ignore[index]
    if isinstance(a, float | complex):
        return repr(a) == repr(b)  # -0.0, inf and nan as themselves
    return a == b


@pytest.mark.parametrize("value", PLAIN, ids=[f"{i}-{type(v).__name__}" for i, v in enumerate(PLAIN)])
def test_plain_values_round_trip_as_the_same_exact_types(value: object) -> None:
    line = dumps(value, None)
    assert b"\n" not in line
    assert exact(loads(line, None), value)


def test_nan_round_trips_and_a_bool_stays_a_bool() -> None:
    back = loads(dumps([float("nan"), True, 1], None), None)
    assert math.isnan(back[0]) and type(back[1]) is bool and type(back[2]) is int  # type: ignore[index]


@pytest.mark.parametrize("value", [Counter("ab"), OrderedDict(a=1), type("Int", (int,), {})(3), object()])
def test_anything_but_an_exact_plain_type_goes_to_the_hook(value: object) -> None:
    with pytest.raises(TypeError):
        dumps(value, None)
    assert dumps(value, lambda v, tokens: tokens.append(b"r0")) == b"r0"


@pytest.mark.parametrize(
    "line",
    [
        b"", b"x", b"i", b"izz", b"i1 i2", b"l2 i1", b"l-1", b"l99999999999 i1", b"d1 i1", b"d1 l0 i1",
        b"S1 l0", b"f1.5.5", b"s6", b"szz", b"T1", b"N0", b"q1/0", b"c1", b"D00", b"r0",
        b"l1 " * (MAX_DEPTH + 5) + b"N", b"l0  i1",
    ],
)  # fmt: skip
def test_a_crafted_line_is_refused(line: bytes) -> None:
    with pytest.raises(WireError):
        loads(line, None)


def test_messages_are_lines_with_a_size_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    stream = io.BytesIO()
    write_message(stream, dumps(("ok", [1, "two"]), None))  # type: ignore[arg-type]
    write_message(stream, b"i1")
    stream.seek(0)
    assert loads(read_message(stream), None) == ("ok", [1, "two"])  # type: ignore[arg-type]
    assert read_message(stream) == b"i1" and read_message(stream) is None  # type: ignore[arg-type]
    monkeypatch.setattr("s3ft.judges.harness.wire.MAX_MESSAGE", 8)
    with pytest.raises(WireError):
        read_message(io.BytesIO(b"s" + b"61" * 20 + b"\n"))  # type: ignore[arg-type]
    with pytest.raises(WireError):
        read_message(io.BytesIO(b"i1"))  # type: ignore[arg-type]  (cut short: no newline)
