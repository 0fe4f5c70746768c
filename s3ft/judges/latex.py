"""LaTeX answers (MATH-style: `\\frac`, `\\sqrt`, intervals, sets, expressions) judged by Hugging Face's math-verify.

Only math-verify's LaTeX reader runs (antlr into sympy); its plain-expression reader calls sympy's
`parse_expr`, an `eval`, and untrusted text never reaches it. A text without LaTeX is handed over
as its final answer in `$...$` (`#### 72` → `$72$`). math-verify bounds parsing and comparing with
`signal.alarm`, which works only in a process's main thread (a Ray task's, the CLI's): elsewhere a
row is an error verdict rather than an unbounded sympy computation.
"""

from __future__ import annotations

import threading
from typing import Any

from s3ft.judges.base import Verdict


def verify_latex(gold: str, response: str, timeout_s: int) -> Verdict:
    if threading.current_thread() is not threading.main_thread():
        return Verdict(False, "error: math-verify needs the main thread for its timeout")
    expected = _parse(gold, timeout_s)
    if not expected:
        return Verdict(False, "error: math-verify found no answer in gold")
    got = _parse(response, timeout_s)
    if not got:
        return Verdict(False, "no answer found in response")
    from math_verify import verify

    same = verify(expected, got, timeout_seconds=timeout_s)
    return Verdict(same, f"math-verify {'match' if same else 'mismatch'}: got {_show(got)}, expected {_show(expected)}")


def latex_view(text: str) -> str:
    """What math-verify reads: a text with LaTeX as it is, else its final answer as inline math."""
    from s3ft.judges.math import answer_span

    if "\\" in text:
        return text
    return f"${answer_span(text).replace('$', '')}$"


def _parse(text: str, timeout_s: int) -> list[Any]:
    from math_verify import LatexExtractionConfig, parse

    return parse(latex_view(text), extraction_config=[LatexExtractionConfig()], parsing_timeout=timeout_s)


def _show(parsed: list[Any]) -> str:
    text = str(parsed[-1])
    return text if len(text) <= 60 else text[:57] + "..."
