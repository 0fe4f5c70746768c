"""Agreement of the numeric math judge with math-verify on the GSM8K train set's gold solutions.

Each gold solution (final line `#### N`) is judged by both against sets of responses built from it:
the gold itself, its bare final answer, its reasoning ending in `\\boxed{N}` (expected correct), and
its reasoning ending in N+1 or in a hedge between N and N+1, plain and boxed (expected incorrect).
"ours" is `MathJudge(verifier="number")` (which rejects hedges); "math-verify" is Hugging Face's
math-verify through `s3ft.judges.latex` alone (LaTeX reader; a text without LaTeX is read as its
final answer in `$...$`). Prints, per set, how many verdicts each got right and how many the two
share, then `ratio=` the fraction of all rows on which they agree.

    python benchmarks/bench_math_verify.py [--data PATH] [--limit N]
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

from s3ft.judges.latex import verify_latex
from s3ft.judges.math import MathJudge

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "gsm8k" / "train.jsonl"

# name, expected verdict, response built from (reasoning before `####`, final number N, the gold)
SETS: list[tuple[str, bool, Callable[[str, Fraction, str], str]]] = [
    ("gold itself", True, lambda reasoning, n, gold: gold),
    ("bare final answer", True, lambda reasoning, n, gold: str(n)),
    ("boxed final answer", True, lambda reasoning, n, gold: f"{reasoning}The answer is $\\boxed{{{n}}}$."),
    ("answer + 1", False, lambda reasoning, n, gold: f"{reasoning}#### {n + 1}"),
    ("boxed answer + 1", False, lambda reasoning, n, gold: f"{reasoning}The answer is $\\boxed{{{n + 1}}}$."),
    ("hedged", False, lambda reasoning, n, gold: f"{reasoning}The answer is {n} or {n + 1}."),
    ("hedged, boxed", False, lambda reasoning, n, gold: f"{reasoning}It could be $\\boxed{{{n} \\text{{ or }} {n + 1}}}$."),
]


def load_golds(path: Path, limit: int | None) -> list[str]:
    with path.open() as f:
        golds = [json.loads(line)["answer"] for line in f]
    return golds[:limit] if limit else golds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="GSM8K JSONL with an `answer` field")
    parser.add_argument("--limit", type=int, default=None, help="only the first N golds")
    args = parser.parse_args()

    golds = load_golds(args.data, args.limit)
    ours = MathJudge(verifier="number")
    agree_total = rows_total = 0
    for name, expected, build in SETS:
        start = time.perf_counter()
        right = {"ours": 0, "math-verify": 0}
        agree = 0
        for gold in golds:
            reasoning, final = gold.rsplit("####", 1)
            response = build(reasoning, Fraction(final.strip().replace(",", "")), gold)
            a = ours.judge_row({"response": response, "gold": gold}).correct
            b = verify_latex(gold, response, timeout_s=5).correct
            right["ours"] += a == expected
            right["math-verify"] += b == expected
            agree += a == b
        agree_total, rows_total = agree_total + agree, rows_total + len(golds)
        print(f"{name} (expected {'correct' if expected else 'incorrect'}): ours {right['ours']}/{len(golds)}, "
              f"math-verify {right['math-verify']}/{len(golds)}, agree {agree}/{len(golds)} "
              f"({time.perf_counter() - start:.0f} s)")
    print(f"agreement: {agree_total}/{rows_total}")
    print(f"ratio={agree_total / rows_total:.4f}")


if __name__ == "__main__":
    main()
