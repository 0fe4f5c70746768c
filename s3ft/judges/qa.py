"""The `qa` judge: short-answer match against a list of acceptable answers (NQ-open, SQuAD).

Both sides are SQuAD-normalised so case, punctuation and articles do not decide correctness.
`exact` suits terse answers; `contains` suits a model that answers in a sentence, and matches
whole words only, so gold "art" is not found in "party". Token F1 is always reported as the score.
"""

from __future__ import annotations

import re
import string
import unicodedata
from collections import Counter
from collections.abc import Mapping
from typing import Any

from s3ft.errors import JudgeError
from s3ft.judges.base import Judge, Verdict, register

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_SENTENCE_PUNCTUATION = ".,;:!?\"'()[]"
MATCH_MODES = ("exact", "contains")


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lowercase, drop punctuation (ASCII and Unicode) and articles, squash spaces."""
    text = "".join(ch for ch in text.lower() if not _is_punctuation(ch))
    return " ".join(_ARTICLES.sub(" ", text).split())


def token_f1(response: str, gold: str) -> float:
    """SQuAD token F1 of two normalised strings; two empty strings agree."""
    got, want = response.split(), gold.split()
    if not got or not want:
        return float(got == want)
    same = sum((Counter(got) & Counter(want)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(got), same / len(want)
    return 2 * precision * recall / (precision + recall)


def gold_answers(row: Mapping[str, Any]) -> list[str]:
    """The acceptable answers of a row: its `answers` list, else its `gold` (a string or a list)."""
    golds = row.get("answers")
    if golds is None:
        golds = row.get("gold")
    if golds is None:
        return []
    return [str(g) for g in golds] if isinstance(golds, list) else [str(golds)]


@register("qa")
class QAJudge(Judge):
    """Normalised answer match; `match` is `exact` (whole response) or `contains` (word span)."""

    required_fields = ("response",)

    def __init__(self, match: str = "exact") -> None:
        if match not in MATCH_MODES:
            raise JudgeError(f"qa judge: unknown match '{match}'; expected one of {', '.join(MATCH_MODES)}")
        self.match = match

    def missing_fields(self, row: Mapping[str, Any]) -> Verdict | None:
        if verdict := super().missing_fields(row):
            return verdict
        if row.get("answers") is None and row.get("gold") is None:
            return Verdict(False, "error: missing field(s) answers or gold")
        return None

    def judge_row(self, row: Mapping[str, Any]) -> Verdict:
        response = str(row["response"])
        pairs = [pair for gold in gold_answers(row) if (pair := _normal_forms(response, gold))[1]]
        if not pairs:
            return Verdict(False, "error: no non-empty gold answer")
        best = max(token_f1(got, want) for got, want in pairs)
        for got, want in pairs:
            if self.match == "exact" and got == want:
                return Verdict(True, f"exact match: '{want}'", best)
            if self.match == "contains" and f" {want} " in f" {got} ":
                return Verdict(True, f"contains '{want}'", best)
        return Verdict(False, f"no gold answer matched (best f1 {best:.2f})", best)


def _normal_forms(response: str, gold: str) -> tuple[str, str]:
    """Normalised (response, gold); for a gold SQuAD erases ("A+", "---") both keep their symbols."""
    if normal_gold := normalize_answer(gold):
        return normalize_answer(response), normal_gold
    return _casefold_tokens(response), _casefold_tokens(gold)


def _casefold_tokens(text: str) -> str:
    """Lowercase tokens with sentence punctuation trimmed from their edges ("A+." → "a+")."""
    return " ".join(token.strip(_SENTENCE_PUNCTUATION) or token for token in text.lower().split())


def _is_punctuation(ch: str) -> bool:
    return ch in string.punctuation or unicodedata.category(ch).startswith("P")
