"""The qa judge on real NQ-open rows in both match modes, and SQuAD F1 by hand."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from s3ft.errors import JudgeError
from s3ft.judges import build_judge
from s3ft.judges.qa import QAJudge, normalize_answer, token_f1

NQ_DEV = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "nq_open" / "dev.jsonl"


@pytest.fixture(scope="module")
def nq_rows() -> list[dict[str, Any]]:
    """NQ-open dev, as `answers` lists the judge reads (the file names the list `answer`)."""
    if not NQ_DEV.exists():
        pytest.skip(f"{NQ_DEV} not present")
    with NQ_DEV.open() as f:
        return [{"question": r["question"], "answers": r["answer"]} for r in map(json.loads, f)]


def verdicts(match: str, rows: list[dict[str, Any]]) -> list[Any]:
    return build_judge("qa", match=match).judge_batch(rows)


def test_nq_dev_size(nq_rows: list[dict[str, Any]]) -> None:
    assert len(nq_rows) == 3610


@pytest.mark.parametrize("match", ["exact", "contains"])
def test_each_gold_answer_is_correct_in_both_modes(nq_rows: list[dict[str, Any]], match: str) -> None:
    rows = [{**r, "response": answer} for r in nq_rows for answer in r["answers"]]
    results = verdicts(match, rows)
    wrong = [(r["response"], v.reason) for r, v in zip(rows, results, strict=True) if not v.correct]
    assert not wrong, wrong[:5]
    assert all(v.score == 1.0 for v in results)


def test_answer_in_a_sentence_passes_contains_and_fails_exact(nq_rows: list[dict[str, Any]]) -> None:
    """Golds made only of punctuation (')', '---') are left out: no sentence can frame them reliably."""
    framed = [r for r in nq_rows if any(ch.isalnum() for ch in r["answers"][-1])]
    assert len(framed) > 3600
    rows = [{**r, "response": f"I'm fairly sure it is {r['answers'][-1]}, as far as I know."} for r in framed]
    contains, exact = verdicts("contains", rows), verdicts("exact", rows)
    assert all(v.correct and v.reason.startswith("contains '") for v in contains)
    assert not any(v.correct for v in exact)
    assert all(v.reason.startswith("no gold answer matched (best f1 ") for v in exact)
    assert all(0.0 < v.score < 1.0 for v in exact)


@pytest.mark.parametrize("match", ["exact", "contains"])
def test_a_non_answer_fails_in_both_modes(nq_rows: list[dict[str, Any]], match: str) -> None:
    results = verdicts(match, [{**r, "response": "I do not know."} for r in nq_rows])
    assert not any(v.correct for v in results)


def test_nq_golds_that_squad_normalisation_erases(nq_rows: list[dict[str, Any]]) -> None:
    """'A+' normalises to '' under SQuAD rules; such golds still match, and only themselves."""
    blood = next(r for r in nq_rows if r["answers"] == ["A+", "AB+"])
    judge = QAJudge("contains")
    assert judge.judge_row({**blood, "response": "Blood type A+."}).reason == "contains 'a+'"
    assert judge.judge_row({**blood, "response": "ab+"}).correct
    assert not judge.judge_row({**blood, "response": "Type A"}).correct
    assert not judge.judge_row({**blood, "response": "O-"}).correct


@pytest.mark.parametrize(
    ("response", "gold", "match", "correct", "reason"),
    [
        ("The Impalas!", "the impalas", "exact", True, "exact match: 'impalas'"),
        ("party", "art", "contains", False, "no gold answer matched (best f1 0.00)"),
        ("They made modern art.", "art", "contains", True, "contains 'art'"),
        ("Bobby Scott-Smith", "Bobby Scott", "contains", False, "no gold answer matched (best f1 0.50)"),
        ("Paris, France", "Paris", "exact", False, "no gold answer matched (best f1 0.67)"),
        ("  PARIS. ", ["London", "Paris"], "exact", True, "exact match: 'paris'"),
    ],
)
def test_match_modes(response: str, gold: Any, match: str, correct: bool, reason: str) -> None:
    verdict = QAJudge(match).judge_batch([{"response": response, "gold": gold}])[0]
    assert (verdict.correct, verdict.reason) == (correct, reason)


@pytest.mark.parametrize(
    ("response", "answers", "f1"),
    [
        ("Scott", ["Bobby Scott"], 2 / 3),  # p 1, r 1/2
        ("the singer Bobby Scott", ["Bobby Scott"], 0.8),  # p 2/3, r 1
        ("December 1972", ["14 December 1972 UTC", "December 1972"], 1.0),  # max over golds
        ("in December 1970", ["14 December 1972 UTC", "December 1972"], 0.4),  # 2/7 vs 2*(1/3*1/2)/(5/6)
        ("one one", ["one season"], 0.5),  # a repeated token counts once: p 1/2, r 1/2
        ("Rihanna", ["Bob Russell"], 0.0),
    ],
)
def test_token_f1_by_hand(response: str, answers: list[str], f1: float) -> None:
    verdict = QAJudge().judge_batch([{"response": response, "answers": answers}])[0]
    assert verdict.score == pytest.approx(f1)


def test_normalize_and_f1_helpers() -> None:
    text = "  The  Eagles’ “Hotel” — California, an  A-side "
    assert normalize_answer(text) == "eagles hotel california aside"
    assert token_f1("", "") == 1.0
    assert token_f1("paris", "") == 0.0


def test_answers_list_wins_over_gold() -> None:
    verdict = QAJudge().judge_batch([{"response": "Paris", "answers": ["Paris"], "gold": "Lyon"}])[0]
    assert verdict.correct


def test_rows_that_cannot_be_judged_are_error_rows() -> None:
    rows = [
        {"response": "Paris"},
        {"gold": "Paris"},
        {"response": "Paris", "answers": []},
        {"response": "x", "gold": "---  "},
    ]
    results = QAJudge("contains").judge_batch(rows)
    assert [v.correct for v in results] == [False] * 4
    assert [v.reason for v in results] == [
        "error: missing field(s) answers or gold",
        "error: missing field(s) response",
        "error: no non-empty gold answer",
        "no gold answer matched (best f1 0.00)",
    ]


def test_unknown_match_mode_is_a_judge_error() -> None:
    with pytest.raises(JudgeError, match="unknown match 'fuzzy'"):
        QAJudge("fuzzy")
