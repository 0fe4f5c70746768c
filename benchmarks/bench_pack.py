"""Seconds to plan one epoch of 1M rows: packing (first-fit over the last 64 sequences), grouping into
micro batches and cutting steps, as every rank does at start (`s3ft.train.batching.plan_steps`).

Rows are synthetic (lengths uniform in 32..2048 tokens, a quarter of each a prompt), held in a
TokenizedSet written and memory-mapped as the trainer does (opening it is timed too). Prints the times,
the packing's padding share and, last, `ratio=plan_cpu_seconds/10` (target: at most 1). CPU seconds of
this process, not wall time, so a busy shared machine does not inflate the figure.

    python benchmarks/bench_pack.py [--rows 1000000] [--budget 16384]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

TARGET_S = 10.0


def synthetic(rows: int, seed: int = 0):
    from s3ft.train.tokenize import TokenizedSet

    rng = np.random.default_rng(seed)
    lengths = rng.integers(32, 2049, size=rows)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    return TokenizedSet(ids=np.array([f"row-{i}" for i in range(rows)]), tokens=np.zeros(int(offsets[-1]), np.int32),
                        offsets=offsets, prompt_lens=(lengths // 4).astype(np.int32))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--budget", type=int, default=16384, help="micro_batch_tokens")
    args = parser.parse_args()

    from s3ft.train.batching import padding_fraction, plan_steps
    from s3ft.train.tokenize import TokenizedSet

    with tempfile.TemporaryDirectory(prefix="bench_pack_") as tmp:
        synthetic(args.rows).save(Path(tmp) / "rows")
        started = time.perf_counter()
        data = TokenizedSet.load(Path(tmp) / "rows")
        opened = time.perf_counter() - started
        started, cpu = time.perf_counter(), time.process_time()
        steps = plan_steps(data, world_size=8, grad_accum=1, budget=args.budget, packing=True, seed=0, epochs=1)
        planned, planned_cpu = time.perf_counter() - started, time.process_time() - cpu
        padding = padding_fraction(data, steps)
    print(f"rows={args.rows} micro_batch_tokens={args.budget} ranks=8: {len(steps)} steps")
    print(f"open_memmap_s={opened:.3f} plan_s={planned:.2f} (wall) plan_cpu_s={planned_cpu:.2f} "
          f"padding_fraction={padding:.4f}")
    print(f"ratio={planned_cpu / TARGET_S:.3f}")


if __name__ == "__main__":
    main()
