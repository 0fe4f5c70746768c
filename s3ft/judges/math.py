"""The `math` judge: a response is correct when its final answer equals the gold's.

GSM8K-style numbers are compared as exact fractions, so `1,200`, `$1200.00` and `1200.` are one
answer and no float rounding can make two different answers equal; a final answer that hedges
between numbers ("17 or 18") is incorrect. Answers that are not one number (`\\sqrt{2}`, intervals,
sets, expressions: MATH-style gold) go to Hugging Face's math-verify, reading LaTeX only: its
plain-expression reader runs sympy's `parse_expr`, an `eval`, which untrusted text never reaches.
`extract_answer` and `parse_number` are public: evaluation and data code read final answers the
same way the judge does.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from decimal import Decimal
from fractions import Fraction
from typing import Any, Literal, get_args

from s3ft.errors import JudgeError
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
# A hedge: numbers joined by commas and at least one "or" ("16, 17 or maybe 18"), read in a short
# window around the final answer after LaTeX wrappers, braces and emphasis are dropped.
_HEDGE_NOISE = re.compile(r"\\(?:boxed|text|textbf|mathrm|mbox|quad)|[{}*]|\\[()\[\]]")
_HEDGE = re.compile(
    rf"(?:{_NUMBER.pattern})(?:\s*,\s*(?:{_NUMBER.pattern}))*\s*,?\s*\bor\s+(?:(?:maybe|perhaps|possibly|even)\s+)?"
    rf"(?:{_NUMBER.pattern})",
    re.IGNORECASE,
)


def extract_answer(text: str) -> str | None:
    """The final answer of `text` as written (e.g. `$1,200`), or None when it has no number.

    Formats in order of trust: `#### N` (first), "the answer is N" (last), `\\boxed{N}` (last),
    then the last number of the text. A format without a number falls through to the next one.
    """
    found = _final_answer(_delatex(text))
    return found.group() if found else None


def _final_answer(text: str) -> re.Match[str] | None:
    """Where the final answer's number is in (delatexed) `text`, by `extract_answer`'s formats."""
    if (at := text.find("####")) >= 0 and (found := _NUMBER.search(text, *_line_after(text, at + 4))):
        return found
    said = list(_ANSWER_IS.finditer(text))
    if said and (found := _NUMBER.search(text, *_line_after(text, said[-1].end()))):
        return found
    if (boxed := _last_boxed(text)) is not None and (found := _NUMBER.search(text, *boxed)):
        return found
    numbers = list(_NUMBER.finditer(text))
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


Verifier = Literal["auto", "number", "math_verify"]


@register("math")
class MathJudge(Judge):
    """Final-answer match: GSM8K-style numbers exactly, other answers (MATH-style LaTeX) by math-verify.

    `verifier`: auto (numbers as numbers; gold, or a boxed response, that is not one number goes to
    math-verify), number (numbers only), math_verify (every row). `timeout_s` bounds math-verify's
    parsing and comparing of one row (sympy can be made to work for ever).
    """

    required_fields = ("response", "gold")

    def __init__(self, verifier: Verifier = "auto", timeout_s: int = 5):
        if verifier not in get_args(Verifier):
            raise JudgeError(f"math judge: verifier must be one of {', '.join(get_args(Verifier))}, got {verifier!r}")
        self.verifier, self.timeout_s = verifier, timeout_s

    def judge_row(self, row: Mapping[str, Any]) -> Verdict:
        gold, response = str(row["gold"]), str(row["response"])
        expected = parse_number(answer_span(gold))
        numeric_gold = expected is not None or "\\" not in gold
        if numeric_gold and (hedge := hedged(response)):
            return Verdict(False, f"hedged: {hedge}")
        if self.verifier == "math_verify" or (self.verifier == "auto" and not (numeric_gold and _plain(response))):
            from s3ft.judges.latex import verify_latex

            return verify_latex(gold, response, self.timeout_s)
        expected = _answer_number(gold)
        if expected is None:
            return Verdict(False, "error: gold has no number")
        got = _answer_number(response)
        if got is None:
            return Verdict(False, "no answer found in response")
        if got == expected:
            return Verdict(True, f"match: {_show(expected)}")
        return Verdict(False, f"mismatch: got {_show(got)}, expected {_show(expected)}")


def hedged(text: str) -> str | None:
    """The alternatives, when the final answer of `text` is one of several numbers offered with "or"
    ("17 or 18", "it could be 16, 17 or 18", `\\boxed{17} or \\boxed{18}`), there or in a last
    box or last number after it ("The answer is 8. Or maybe 9: \\boxed{8 or 9}"); else None."""
    text = _delatex(text)
    found = _final_answer(text)
    if found is None:
        return None
    answer = parse_number(found.group())
    boxed = _last_boxed(text)
    numbers = list(_NUMBER.finditer(text))
    candidates = [found, _NUMBER.search(text, *boxed) if boxed else None, numbers[-1]]
    for at in dict.fromkeys(m.start() for m in candidates if m is not None):
        lo = max(text.rfind("\n", 0, at) + 1, at - 200)
        window = _HEDGE_NOISE.sub(lambda m: " " * len(m.group()), text[lo : at + 200])  # offsets kept
        for group in _HEDGE.finditer(window):
            values = {parse_number(n) for n in _NUMBER.findall(group.group())}
            if group.start() <= at - lo < group.end() and len(values) > 1 and answer in values:
                return " ".join(group.group().split())
    return None


def answer_span(text: str) -> str:
    """The text of the final answer: the line after `####`, the last `\\boxed{}`, the line after
    "the answer is", else the whole text (stripped, without a closing `.`)."""
    if (at := text.find("####")) >= 0:
        start, end = _line_after(text, at + 4)
    elif (boxed := _last_boxed(text)) is not None:
        start, end = boxed
    elif said := list(_ANSWER_IS.finditer(text)):
        start, end = _line_after(text, said[-1].end())
    else:
        start, end = 0, len(text)
    return text[start:end].strip().rstrip(".").strip()


def _plain(response: str) -> bool:
    """Whether a response's boxed answer, if it has one, is plain (numbers, `\\frac`), not other LaTeX."""
    boxed = _last_boxed(response)
    return boxed is None or "\\" not in _delatex(response[boxed[0] : boxed[1]])


def _answer_number(text: str) -> Fraction | None:
    answer = extract_answer(text)
    return None if answer is None else parse_number(answer)


def _delatex(text: str) -> str:
    """LaTeX numbers as plain ones: `\\frac{3}{4}` → `3/4`, `1{,}200` → `1,200`, `\\$5` → `$5`."""
    if "\\" not in text and "{," not in text:
        return text
    text = _FRAC.sub(r"\1/\2", text)
    return text.replace("{,}", ",").replace("\\!", "").replace("\\$", "$").replace("\\%", "%")


def _line_after(text: str, start: int) -> tuple[int, int]:
    """The span of the rest of the line after a marker, or of the next line when the marker ends its line."""
    while start < len(text) and text[start] in " \t:*\n":
        start += 1
    end = text.find("\n", start)
    return start, len(text) if end < 0 else end


def _last_boxed(text: str) -> tuple[int, int] | None:
    """The span of the content of the last `\\boxed{...}`, braces balanced; None if absent or unclosed."""
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
                return start + len(_BOXED), end
    return None


def _show(number: Fraction) -> str:
    """Exact for the reason text: an integer, a terminating decimal, else `a/b`."""
    if number.denominator == 1:
        return str(number.numerator)
    decimal = Decimal(number.numerator) / Decimal(number.denominator)
    return format(decimal, "f") if Fraction(decimal) == number else str(number)
