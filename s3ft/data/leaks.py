"""Paraphrases that leak their prompt: rewrites that talk about a reference the model will never see.

The paraphrase prompt shows the model the gold response and asks for a rewrite. A rewrite that
passes the task judge can still say "As the reference solution shows, ...", "Here is my rewrite:"
or "your response": trained on, it teaches the model to speak of a prompt it is never given.
A phrase list (case-insensitive, whole words, any spacing) refuses such rewrites; the defaults hold
SDFT's list (sail-sg/sdft, `eval/gen_distilled_data.py`) and more, in three kinds, plus phrases of
each task's own paraphrase prompt.

>>> find_leak("As the Reference  Solution shows, 4.", leak_phrases("gsm8k"))
'the reference'
>>> find_leak("She has 4 apples. The answer is 4", leak_phrases("gsm8k")) is None
True
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import lru_cache
from typing import TYPE_CHECKING

from s3ft.selection import LeakCheck

if TYPE_CHECKING:
    from s3ft.config import ParaphraseConfig


MENTIONS_REFERENCE = (
    "reference answer", "reference solution", "reference response", "reference code", "reference implementation",
    "the reference", "gold answer", "gold solution", "gold response", "ground truth", "given solution",
    "provided solution", "original solution", "solution provided", "solution given", "provided answer",
    "answer provided", "given answer", "original answer", "original response", "model answer",
)
MENTIONS_REWRITING = (
    "rewrite", "rewrites", "rewrote", "rewritten", "rewriting", "rephrase", "rephrased", "rephrasing", "paraphrase",
    "paraphrased", "paraphrasing", "reworded", "in my own words", "in your own words", "here is my", "here's my",
    "my version", "my response", "my own response",
)
MENTIONS_FRAMING = (
    "your response", "your own response", "your answer", "your task", "your turn", "now it's your turn",
    "as instructed", "as requested", "as you asked", "the prompt", "the instructions",
)
# Phrases of each task's paraphrase prompt (s3ft/data/prompts/TASK.yaml) that its answers never need.
TASK_PHRASES: dict[str, tuple[str, ...]] = {
    "gsm8k": ("math problem and its", "the solution above", "the above solution"),
    "humaneval": ("function to complete and", "the provided code", "the given code", "keeping it correct"),
    "mbpp": ("programming task and", "the provided code", "the given code", "keeping it correct"),
    "nq_open": ("question and its correct answer", "answer the question again", "keeping the answer correct",
                "the correct answer given"),
    "generic": ("request and a reference", "keeping everything it says correct"),
}


def leak_phrases(task: str, phrases: Sequence[str] | None = None, extra: Sequence[str] = ()) -> tuple[str, ...]:
    """`phrases`, or the defaults for `task` when None, plus `extra`."""
    base = tuple(phrases) if phrases is not None else (
        MENTIONS_REFERENCE + MENTIONS_REWRITING + MENTIONS_FRAMING + TASK_PHRASES.get(task, ()))
    return base + tuple(extra)


def find_leak(text: str, phrases: Sequence[str], prompt: str = "") -> str | None:
    """The first phrase of `phrases` that `text` contains as whole words and the training prompt
    (`prompt`, which the model does see) does not, else None: a HumanEval docstring's "Your task"
    is the prompt's own wording, not a leak."""
    pattern = _pattern(tuple(phrases))
    if pattern is None:
        return None
    for found in pattern.finditer(_plain(text)):
        phrase = _normal(found.group())
        if not re.search(_whole_words(phrase), _plain(prompt), re.IGNORECASE):
            return phrase
    return None


def leak_check(task: str, settings: ParaphraseConfig) -> LeakCheck | None:
    """The check selection runs on each paraphrase judged correct, or None when the check is off."""
    if not settings.leak_check:
        return None
    chosen = leak_phrases(task, settings.leak_phrases, settings.extra_leak_phrases)
    return lambda text, prompt: find_leak(text, chosen, prompt)


@lru_cache(maxsize=16)
def _pattern(phrases: tuple[str, ...]) -> re.Pattern[str] | None:
    """One regex for all phrases, longest first (so a longer phrase wins where two start together)."""
    normal = sorted({_normal(p) for p in phrases} - {""}, key=len, reverse=True)
    return re.compile("|".join(_whole_words(p) for p in normal), re.IGNORECASE) if normal else None


def _whole_words(phrase: str) -> str:
    return r"(?<!\w)" + r"\s+".join(re.escape(w) for w in phrase.split()) + r"(?!\w)"


def _plain(text: str) -> str:
    return text.replace("\u2019", "'")


def _normal(phrase: str) -> str:
    return " ".join(phrase.lower().split())
