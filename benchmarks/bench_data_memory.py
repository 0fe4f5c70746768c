"""Peak memory of the `s3ft data` driver on 20,000 rows against 2,000 (GSM8K train, repeated): the data
engine streams shard by shard, so the driver's peak RSS should stay flat as the input grows.

Each size runs `s3ft data` in its own process (tiny random model, vLLM on CPU, ssr strategy, 4 new
tokens: the point is the rows flowing through, not the text). Needs ../shared/datasets/gsm8k.
Prints both peaks and, last, `ratio=X` (peak at 20k / peak at 2k; flat is about 1.0).
"""

from __future__ import annotations

import argparse
import itertools
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
GSM8K = REPO.parent / "shared" / "datasets" / "gsm8k" / "train.jsonl"


def write_rows(path: Path, n: int) -> None:
    source = [json.loads(line) for line in GSM8K.read_text().splitlines()]
    with path.open("w") as fh:
        for i, row in enumerate(itertools.islice(itertools.cycle(source), n)):
            fh.write(json.dumps({**row, "id": f"r{i}"}) + "\n")


def peak_rss_mib(rows: int, root: Path, model: Path) -> tuple[float, float]:
    """The `s3ft data` driver's peak RSS on `rows` rows, and the seconds it took; the run lands in root/run{rows}."""
    data = root / f"rows{rows}.jsonl"
    write_rows(data, rows)
    config = root / f"c{rows}.yaml"
    config.write_text(yaml.safe_dump({
        "output_dir": str(root / f"run{rows}"),
        "model": {"path": str(model), "dtype": "float32"},
        "data": {"path": str(data), "task": "gsm8k"},
        "generation": {"backend": "vllm", "max_tokens": 4, "shard_size": 500, "enforce_eager": True,
                       "cpu_kvcache_gib": 2},
        "selection": {"strategy": "ssr"},
    }))
    # The driver's own peak, measured inside it, not the engine actor's: the driver is what holds
    # rows; the engine's memory is the model's and does not grow with the input.
    probe = (
        "import resource, sys; from s3ft.cli import main; code = main(sys.argv[1:]); "
        "print('peak_kib', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss); sys.exit(code)"
    )
    started = time.time()
    done = subprocess.run([sys.executable, "-c", probe, "data", str(config)], check=True, cwd=REPO,
                          capture_output=True, text=True)
    peak_kib = int(next(line.split()[1] for line in done.stdout.splitlines() if line.startswith("peak_kib")))
    return peak_kib / 1024, time.time() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--small", type=int, default=2000)
    parser.add_argument("--large", type=int, default=20000)
    args = parser.parse_args()
    from s3ft.models.tiny import build_tiny_model

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model = build_tiny_model(root / "model")  # here, so neither measured run pays for it
        small, t_small = peak_rss_mib(args.small, root, model)
        large, t_large = peak_rss_mib(args.large, root, model)
    print(f"{args.small} rows: driver peak RSS {small:.0f} MiB ({t_small:.0f} s)")
    print(f"{args.large} rows: driver peak RSS {large:.0f} MiB ({t_large:.0f} s)")
    print(f"ratio={large / small:.3f}")


if __name__ == "__main__":
    main()
