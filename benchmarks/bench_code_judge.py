"""Throughput of the code judge on the 164 HumanEval canonical solutions: parallel against sequential.

Both run in this process, on the same rows: one worker, and a pool sized to the CPUs
(`num_workers=0`), passes interleaved, best of `--repeats` each. Every solution must pass. Prints
programs/s for each, then `ratio=parallel/sequential` as the last line. Other load on the machine
lowers the ratio (the parallel pass needs the idle cores).

    python benchmarks/bench_code_judge.py [--data PATH] [--repeats N]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

from s3ft.judges.code import CodeJudge

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "humaneval" / "HumanEval.jsonl"


def programs_per_second(judge: CodeJudge, rows: list[dict[str, Any]]) -> float:
    start = time.perf_counter()
    verdicts = judge.judge_batch(rows)
    elapsed = time.perf_counter() - start
    failed = [(r["task_id"], v.reason) for r, v in zip(rows, verdicts) if not v.correct]
    if failed:
        raise SystemExit(f"canonical solutions failed: {failed}")
    return len(rows) / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    with args.data.open() as f:
        rows = [{**p, "response": p["canonical_solution"]} for p in map(json.loads, f)]
    judges = {"sequential": CodeJudge(timeout_s=20, num_workers=1), "parallel": CodeJudge(timeout_s=20, num_workers=0)}
    best = dict.fromkeys(judges, 0.0)
    for _ in range(args.repeats):  # interleaved, best of each: a burst of other load hits both alike
        for name, judge in judges.items():
            best[name] = max(best[name], programs_per_second(judge, rows))
    sequential, parallel = best["sequential"], best["parallel"]
    print(f"programs={len(rows)} cpus={os.cpu_count()}")
    print(f"sequential (1 worker): {sequential:.1f} programs/s")
    print(f"parallel ({os.cpu_count()} workers): {parallel:.1f} programs/s")
    print(f"ratio={parallel / sequential:.2f}")


if __name__ == "__main__":
    main()
