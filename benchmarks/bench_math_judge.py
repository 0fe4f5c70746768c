"""Throughput of the math judge on all GSM8K train golds, against a naive last-number judge.

Each gold is judged against itself (must pass) and against itself with the final number + 1
(must fail). The reference reads the last number of each text and compares floats: the floor a
rule judge should not fall far below. Prints each judge's verdicts right, then rows/s, then
`ratio=ours/reference` (rows/s) as the last line.

    python benchmarks/bench_math_judge.py [--data PATH] [--repeats N]
"""

from __future__ import annotations

import argparse
import json
import re
import time
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

from s3ft.judges.math import MathJudge

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "gsm8k" / "train.jsonl"
Rows = list[dict[str, str]]
_NAIVE_NUMBER = re.compile(r"-?\d[\d,]*\.?\d*")


def naive_judge(rows: Rows) -> list[bool]:
    """The reference: last number of response and gold, commas dropped, float ==."""

    def last(text: str) -> float | None:
        numbers = _NAIVE_NUMBER.findall(text)
        return float(numbers[-1].replace(",", "").rstrip(".")) if numbers else None

    return [(got := last(r["response"])) is not None and got == last(r["gold"]) for r in rows]


def our_judge(rows: Rows) -> list[bool]:
    return [v.correct for v in MathJudge().judge_batch(rows)]


def build_rows(path: Path) -> tuple[Rows, list[bool]]:
    """Gold-vs-gold rows (expected correct), then gold-vs-perturbed rows (expected wrong)."""
    with path.open() as f:
        golds = [json.loads(line)["answer"] for line in f]
    perturbed = []
    for gold in golds:
        reasoning, final = gold.rsplit("####", 1)
        perturbed.append(f"{reasoning}#### {Fraction(final.strip().replace(',', '')) + 1}")
    rows = [{"response": g, "gold": g} for g in golds]
    rows += [{"response": p, "gold": g} for p, g in zip(perturbed, golds, strict=True)]
    return rows, [True] * len(golds) + [False] * len(golds)


def best_time(judge: Callable[[Rows], list[bool]], rows: Rows, repeats: int) -> tuple[float, list[bool]]:
    best, verdicts = float("inf"), []
    for _ in range(repeats):
        start = time.perf_counter()
        verdicts = judge(rows)
        best = min(best, time.perf_counter() - start)
    return best, verdicts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="GSM8K JSONL with an `answer` field")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per judge; the best counts")
    args = parser.parse_args()

    rows, expected = build_rows(args.data)
    print(f"rows: {len(rows)} ({len(rows) // 2} gold-vs-gold, {len(rows) // 2} gold-vs-perturbed)")
    rates = {}
    for name, judge in (("ours", our_judge), ("reference", naive_judge)):
        seconds, verdicts = best_time(judge, rows, args.repeats)
        right = sum(v == e for v, e in zip(verdicts, expected, strict=True))
        rates[name] = len(rows) / seconds
        print(f"{name}: {right}/{len(rows)} verdicts right, best of {args.repeats}: {seconds:.3f} s")
    print(f"rows_per_s={rates['ours']:.0f} reference_rows_per_s={rates['reference']:.0f}")
    print(f"ratio={rates['ours'] / rates['reference']:.3f}")


if __name__ == "__main__":
    main()
