"""The math judge on every real GSM8K gold, on each answer format a model writes, on hedged
answers, and on MATH-style LaTeX answers through math-verify."""

from __future__ import annotations

import json
import threading
import time
from fractions import Fraction
from pathlib import Path

import pytest

from s3ft.errors import JudgeError
from s3ft.judges import Verdict, build_judge
from s3ft.judges.math import MathJudge, extract_answer, parse_number

GSM8K = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "gsm8k"


def load_golds(split: str) -> list[str]:
    path = GSM8K / f"{split}.jsonl"
    if not path.exists():
        pytest.skip(f"{path} not present")
    with path.open() as f:
        return [json.loads(line)["answer"] for line in f]


def final_number(gold: str) -> Fraction:
    """The reference reading of a GSM8K gold, independent of the judge: the text after `####`."""
    return Fraction(gold.split("####")[1].strip().replace(",", ""))


def with_final(gold: str, answer: str) -> str:
    """The gold's reasoning with its `#### N` line replaced by `answer`."""
    return gold.rsplit("####", 1)[0] + answer


@pytest.fixture(scope="module", params=["train", "test"])
def golds(request: pytest.FixtureRequest) -> list[str]:
    return load_golds(request.param)


def test_split_sizes() -> None:
    assert len(load_golds("train")) == 7473
    assert len(load_golds("test")) == 1319


def test_every_gold_parses_to_its_final_number(golds: list[str]) -> None:
    for gold in golds:
        assert parse_number(extract_answer(gold) or "") == final_number(gold), gold[-80:]


def test_gold_against_itself_is_correct(golds: list[str]) -> None:
    verdicts = MathJudge().judge_batch([{"response": g, "gold": g} for g in golds])
    wrong = [(g[-40:], v.reason) for g, v in zip(golds, verdicts, strict=True) if not v.correct]
    assert not wrong, wrong[:5]
    assert all(v.reason.startswith("match: ") for v in verdicts)


def test_gold_with_final_number_plus_one_is_wrong(golds: list[str]) -> None:
    rows = [{"response": with_final(g, f"#### {final_number(g) + 1}"), "gold": g} for g in golds]
    verdicts = MathJudge().judge_batch(rows)
    assert not any(v.correct for v in verdicts)
    assert all(v.reason.startswith("mismatch: got ") for v in verdicts)


@pytest.mark.parametrize(
    "ending",
    ["The answer is {n}.", "so the final answer is: ${n}", "Therefore \\boxed{{{n}}}.", "In total {n} units."],
)
def test_gold_reasoning_with_a_model_style_ending(golds: list[str], ending: str) -> None:
    """The formats a base model writes instead of `#### N` all read the same final number."""
    judge = MathJudge()
    for gold in golds[:2000]:
        n = gold.split("####")[1].strip()
        assert judge.judge_row({"response": with_final(gold, ending.format(n=n)), "gold": gold}).correct, n


@pytest.mark.parametrize(
    ("text", "answer"),
    [
        ("She pays 5 + 7 = 12.\n#### 1,200", "1,200"),
        ("#### 3 apples and 4 pears", "3"),  # `####` takes its first number
        ("#### none\nso 8 in all", "8"),  # a `####` without a number falls through
        ("The answer is 5. No wait, the answer is 6. Total 9", "6"),  # last "answer is"
        ("THE ANSWER IS -12.", "-12"),
        ("The answer is:\n\n$18.00", "$18.00"),
        ("The answer is forty, I computed 40", "40"),  # no number after the phrase: fall through
        ("\\boxed{3} then \\boxed{\\frac{3}{4}}", "3/4"),
        ("\\boxed{1{,}200}", "1,200"),
        ("\\boxed{x = -\\dfrac{1}{2}}", "-1/2"),
        ("\\boxed{\\text{{unclosed}", None),
        ("It grew by 25%.", "25"),
        ("ages 3-4", "4"),  # a hyphen between numbers is not a minus sign
        ("1,2,3", "3"),  # not thousands groups
        ("1,2345", "2345"),
        ("She ate 3/4 of it.", "3/4"),
        ("It costs .5 dollars", ".5"),
        ("no digits here", None),
        ("", None),
    ],
)
def test_extract_answer(text: str, answer: str | None) -> None:
    assert extract_answer(text) == answer


@pytest.mark.parametrize(
    ("text", "number"),
    [
        ("72", Fraction(72)),
        ("72.", Fraction(72)),
        ("72.00", Fraction(72)),
        ("1,200", Fraction(1200)),
        ("$1,200.50", Fraction("1200.5")),
        ("-$5", Fraction(-5)),
        ("−7", Fraction(-7)),
        ("50%", Fraction(50)),
        ("0.1", Fraction(1, 10)),
        ("3/4", Fraction(3, 4)),
        ("\\frac{3}{4}", Fraction(3, 4)),
        ("1/0", None),
        ("1,20", None),
        ("12 apples", None),
        ("x", None),
    ],
)
def test_parse_number(text: str, number: Fraction | None) -> None:
    assert parse_number(text) == number


@pytest.mark.parametrize(
    ("response", "gold", "correct", "reason"),
    [
        ("The answer is $1,200.00.", "#### 1,200", True, "match: 1200"),
        ("The answer is 0.75", "3/4", True, "match: 0.75"),
        ("\\boxed{\\frac{3}{4}}", "0.75", True, "match: 0.75"),
        ("so she has -3 left", "#### -3", True, "match: -3"),
        ("So 71 in all.", "He sells 72.\n#### 72", False, "mismatch: got 71, expected 72"),
        ("0.1 + 0.2 = 0.30000000000000004", "0.3", False, "mismatch: got 0.30000000000000004, expected 0.3"),
        ("9007199254740993", "9007199254740992", False, "mismatch: got 9007199254740993, expected 9007199254740992"),
        ("I am not sure.", "#### 72", False, "no answer found in response"),
        ("The answer is 5", "#### none", False, "error: gold has no number"),
        ("a third: 1/3", "#### 2/6", True, "match: 1/3"),
        (42, 42, True, "match: 42"),  # numbers straight from JSON
    ],
)
def test_judge_verdicts(response: object, gold: object, correct: bool, reason: str) -> None:
    verdict = build_judge("math").judge_batch([{"response": response, "gold": gold}])[0]
    assert (verdict.correct, verdict.reason) == (correct, reason)


def test_missing_fields_are_error_rows_not_exceptions() -> None:
    rows = [{"response": "5"}, {"gold": "#### 5"}, {"response": None, "gold": "5"}, {"response": "5", "gold": "5"}]
    verdicts = MathJudge().judge_batch(rows)
    assert [v.correct for v in verdicts] == [False, False, False, True]
    assert verdicts[0].reason == "error: missing field(s) gold"
    assert verdicts[1].reason == verdicts[2].reason == "error: missing field(s) response"


@pytest.mark.parametrize(
    ("response", "hedge"),
    [
        ("The answer is 17 or 18", "17 or 18"),
        ("Hmm, it could be 16, 17 or 18", "16, 17 or 18"),
        ("#### 17 or 18", "17 or 18"),
        ("\\boxed{17} or \\boxed{18}", "17 or 18"),
        ("\\boxed{17 \\text{ or } 18}", "17 or 18"),
        ("The answer is 17 or maybe 18.", "17 or maybe 18"),
        ("So 18 OR 17", "18 OR 17"),
        ("The answer is **17** or **18**", "17 or 18"),
        ("She spent $17, or perhaps $18.", "$17, or perhaps $18"),
    ],
)
def test_a_hedged_answer_is_incorrect_even_when_it_names_the_gold(response: str, hedge: str) -> None:
    verdict = MathJudge().judge_row({"response": response, "gold": "Some steps.\n#### 17"})
    assert (verdict.correct, verdict.reason) == (False, f"hedged: {hedge}")


@pytest.mark.parametrize(
    "response",
    [
        "She needs 2 or 3 boxes per shelf, so 17 in all.",  # an "or" in the reasoning, not in the answer
        "It is 17 or 17.0",  # one number written twice
        "Either way, the answer is 17.",
        "1 or 2 apples fall each day.\n#### 17",
    ],
)
def test_an_or_that_offers_no_other_answer_is_no_hedge(response: str) -> None:
    assert MathJudge().judge_row({"response": response, "gold": "#### 17"}) == Verdict(True, "match: 17")


def test_every_gsm8k_gold_offered_as_the_answer_or_the_next_number_is_a_hedge(golds: list[str]) -> None:
    rows = [{"response": with_final(g, f"The answer is {final_number(g)} or {final_number(g) + 1}."), "gold": g}
            for g in golds]
    verdicts = MathJudge().judge_batch(rows)
    assert all(v.reason.startswith("hedged: ") for v in verdicts), [v.reason for v in verdicts if v.correct][:3]


MATH_CASES = [
    # (response, gold, correct): MATH-style answers go to math-verify
    ("$\\sqrt{2}$", "\\boxed{\\sqrt{2}}", True),
    ("so it is \\boxed{\\frac{2}{\\sqrt{2}}}", "\\boxed{\\sqrt{2}}", True),
    ("\\boxed{2}", "\\boxed{\\sqrt{2}}", False),
    ("\\boxed{[1,3)}", "\\boxed{[1, 3)}", True),
    ("\\boxed{(1, 3)}", "\\boxed{[1, 3)}", False),
    ("\\boxed{\\{2, 1\\}}", "\\boxed{\\{1, 2\\}}", True),
    ("\\boxed{\\{1, 2, 3\\}}", "\\boxed{\\{1, 2\\}}", False),
    ("\\boxed{x(x+2)}", "\\boxed{x^2 + 2x}", True),
    ("\\boxed{x^2 + 2}", "\\boxed{x^2 + 2x}", False),
    ("x = \\boxed{\\frac{\\pi}{4}}", "\\boxed{\\frac{\\pi}{4}}", True),
    ("\\boxed{1 \\text{ or } 2}", "\\boxed{1, 2}", True),  # both roots: the gold asks for two values
    ("\\boxed{\\sqrt{4}}", "#### 2", True),  # a numeric gold, a LaTeX response
    ("\\boxed{0.5}", "\\boxed{\\frac{1}{2}}", True),  # a fraction is a number: compared exactly
    ("\\boxed{\\frac{1}{3}}", "\\boxed{\\frac{1}{2}}", False),
]


@pytest.mark.parametrize(("response", "gold", "correct"), MATH_CASES)
def test_math_style_answers(response: str, gold: str, correct: bool) -> None:
    verdict = MathJudge().judge_row({"response": response, "gold": gold})
    assert verdict.correct is correct, verdict.reason


def test_the_verifier_option() -> None:
    row = {"response": "\\boxed{\\sqrt{4}}", "gold": "#### 2"}
    assert MathJudge(verifier="number").judge_row(row) == Verdict(False, "mismatch: got 4, expected 2")
    assert MathJudge(verifier="math_verify").judge_row(row).reason == "math-verify match: got \\sqrt{4}, expected 2"
    plain = MathJudge(verifier="math_verify").judge_row({"response": "The answer is $1,200.", "gold": "#### 1200"})
    assert plain == Verdict(True, "math-verify match: got 1,200, expected 1200")
    with pytest.raises(JudgeError, match="verifier must be one of auto, number, math_verify"):
        MathJudge(verifier="sympy")  # type: ignore[arg-type]
    from s3ft.config import JudgeConfig, build_section

    cfg = build_section(JudgeConfig, {"kind": "math", "options": {"verifier": "math_verify", "timeout_s": 3}}, "judge")
    assert cfg.options == {"verifier": "math_verify", "timeout_s": 3}


def test_math_verify_agrees_on_gsm8k_golds_read_as_latex() -> None:
    golds = load_golds("train")[:200]
    judge = MathJudge(verifier="math_verify")
    assert all(judge.judge_row({"response": g, "gold": g}).correct for g in golds)
    plus_one = [{"response": with_final(g, f"#### {final_number(g) + 1}"), "gold": g} for g in golds]
    assert not any(v.correct for v in judge.judge_batch(plus_one))


def test_untrusted_text_reaches_no_eval(tmp_path: Path) -> None:
    """math-verify's plain-expression reader is sympy's parse_expr (an eval); it is never used."""
    marker = tmp_path / "pwned"
    attack = f"__import__('os').system('touch {marker}')"
    for verifier in ("auto", "math_verify"):
        for row in ({"response": attack, "gold": "\\boxed{\\sqrt{2}}"}, {"response": "\\boxed{1}", "gold": attack}):
            assert not MathJudge(verifier=verifier).judge_row(row).correct
    assert not marker.exists()


def test_a_tower_of_powers_ends_in_time() -> None:
    start = time.perf_counter()
    verdict = MathJudge(timeout_s=2).judge_row(
        {"response": "\\boxed{2^{2^{2^{2^{2^{100}}}}}}", "gold": "\\boxed{2^{2^{2^{2^{2^{100}}}}} + 1}"})
    assert not verdict.correct and time.perf_counter() - start < 10


def test_off_the_main_thread_math_verify_refuses_rather_than_run_unbounded() -> None:
    out: list[Verdict] = []
    worker = threading.Thread(target=lambda: out.append(MathJudge().judge_row({"response": "$\\sqrt{2}$",
                                                                               "gold": "\\boxed{\\sqrt{2}}"})))
    worker.start()
    worker.join(60)
    assert out == [Verdict(False, "error: math-verify needs the main thread for its timeout")]


def test_a_hedge_after_the_stated_answer_counts() -> None:
    """GSM8K golds often say "the answer is 8" mid-way; a boxed hedge after it is still a hedge."""
    response = "So 8 own both.\nThe answer is 8.\nIt could be $\\boxed{8 \\text{ or } 9}$."
    assert MathJudge().judge_row({"response": response, "gold": "#### 8"}) == Verdict(False, "hedged: 8 or 9")
    calm = "The answer is 17.\n(Each box holds 2 or 3 apples.)"
    assert MathJudge().judge_row({"response": calm, "gold": "#### 17"}) == Verdict(True, "match: 17")
