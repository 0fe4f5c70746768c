"""The `math` judge: a response is correct when its final number equals the gold's (GSM8K).

Answers are compared as exact fractions, so `1,200`, `$1200.00` and `1200.` are one answer and no
float rounding can make two different answers equal. `extract_answer` and `parse_number` are public:
evaluation and data code read final answers the same way the judge does.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from decimal import Decimal
from fractions import Fraction
from typing import Any

from s3ft.judges.base import Judge, Verdict, register

# A number as written in answers: optional sign and `$`, thousands commas, decimals, or `a/b`.
# The sign needs no word or `)` before it, so the `-` of `3-4` is not read as a negative 4.
_NUMBER = re.compile(
    r"(?:(?<![\w)])[-−])?\$?"
    r"(?:(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?(?:/\d+)?|\.\d+)"
)
_ANSWER_IS = re.compile(r"the (?:final )?answer is", re.IGNORECASE)
_FRAC = re.compile(r"\\[dt]?frac\{([^{}]*)\}\{([^{}]*)\}")
_BOXED = "\\boxed{"


def extract_answer(text: str) -> str | None:
    """The final answer of `text` as written (e.g. `$1,200`), or None when it has no number.

    Formats in order of trust: `#### N` (first), "the answer is N" (last), `\\boxed{N}` (last),
    then the last number of the text. A format without a number falls through to the next one.
    """
    text = _delatex(text)
    if (at := text.find("####")) >= 0 and (found := _first_number(_line_after(text, at + 4))):
        return found
    said = list(_ANSWER_IS.finditer(text))
    if said and (found := _first_number(_line_after(text, said[-1].end()))):
        return found
    if (boxed := _last_boxed(text)) is not None and (found := _first_number(boxed)):
        return found
    numbers = _NUMBER.findall(text)
    return numbers[-1] if numbers else None


def parse_number(text: str) -> Fraction | None:
    """`text` as an exact number when it is one number (`$`, `%`, commas, a final `.` ignored)."""
    cleaned = _delatex(text).strip().rstrip(".").replace("$", "").replace("%", "").strip()
    if not _NUMBER.fullmatch(cleaned):
        return None
    try:
        return Fraction(cleaned.replace(",", "").replace("−", "-"))
    except ZeroDivisionError:
        return None


@register("math")
class MathJudge(Judge):
    """Final-answer match for GSM8K-style problems; gold is `... #### N` or a bare number."""

    required_fields = ("response", "gold")

    def judge_row(self, row: Mapping[str, Any]) -> Verdict:
        expected = _answer_number(str(row["gold"]))
        if expected is None:
            return Verdict(False, "error: gold has no number")
        got = _answer_number(str(row["response"]))
        if got is None:
            return Verdict(False, "no answer found in response")
        if got == expected:
            return Verdict(True, f"match: {_show(expected)}")
        return Verdict(False, f"mismatch: got {_show(got)}, expected {_show(expected)}")


def _answer_number(text: str) -> Fraction | None:
    answer = extract_answer(text)
    return None if answer is None else parse_number(answer)


def _delatex(text: str) -> str:
    """LaTeX numbers as plain ones: `\\frac{3}{4}` → `3/4`, `1{,}200` → `1,200`, `\\$5` → `$5`."""
    if "\\" not in text and "{," not in text:
        return text
    text = _FRAC.sub(r"\1/\2", text)
    return text.replace("{,}", ",").replace("\\!", "").replace("\\$", "$").replace("\\%", "%")


def _line_after(text: str, start: int) -> str:
    """The rest of the line after a marker, or the next line when the marker ends its line."""
    rest = text[start:].lstrip(" \t:*\n")
    return rest.split("\n", 1)[0]


def _first_number(text: str) -> str | None:
    match = _NUMBER.search(text)
    return match.group() if match else None


def _last_boxed(text: str) -> str | None:
    """The content of the last `\\boxed{...}`, braces balanced; None if absent or unclosed."""
    start = text.rfind(_BOXED)
    if start < 0:
        return None
    depth = 1
    for end in range(start + len(_BOXED), len(text)):
        if text[end] == "{":
            depth += 1
        elif text[end] == "}":
            depth -= 1
            if depth == 0:
                return text[start + len(_BOXED) : end]
    return None


def _show(number: Fraction) -> str:
    """Exact for the reason text: an integer, a terminating decimal, else `a/b`."""
    if number.denominator == 1:
        return str(number.numerator)
    decimal = Decimal(number.numerator) / Decimal(number.denominator)
    return format(decimal, "f") if Fraction(decimal) == number else str(number)
