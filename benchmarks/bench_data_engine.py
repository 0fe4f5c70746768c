"""Wall-clock of `s3ft data` on the code task, streamed against staged, side by side.

The setting: HumanEval's 164 problems (`--copies` of each, with ids of their own), a tiny random Llama
(`s3ft/models/tiny.py`, `--hidden-size` × `--layers`) in one vLLM engine, and the code judge running
every program in the sandbox. The model's answers and paraphrases are garbage, so every row goes the
whole way — generate, judge (it fails), paraphrase, judge again — and every judgement is a real
sandboxed run of the problem's prompt, the model's text and the problem's tests (it fails fast, on a
syntax or name error, as a wrong answer of a real model often does). `--max-tokens` and the model's
size set how long generation takes against judging: the defaults make them comparable on the
2-core development machine, and the script prints both (the staged run's seconds per stage), so a
reader sees the balance the ratio was measured at.

`--max-num-seqs` (vLLM's limit on the sequences an engine runs at once; the pool holds twice that)
sets how many engine batches the data is; unset, vLLM's default (256) holds these rows in one batch,
where a real run is many batches (7,473 GSM8K rows at 256 are 29). Both modes run with the same
value. On the development machine 32 (5 batches of the 164 rows) measured within the spread of 256:
both cores are busy while judging and generation overlap, so the CPUs, not the batches, set the gain.

Both modes run the same command on the same local Ray cluster (started here, `--cpus` CPUs: one
for the engine, the rest for the judge), alternating, each in a fresh run directory; the first run
of each is a warm-up (`--warmups`). Printed: the median wall-clock of each mode over `--repeats` with the spread,
the time of the four steps alone (from the manifests), and last `ratio=X` (staged / streamed
wall-clock, medians).

    python benchmarks/bench_data_engine.py [--copies 2 --max-tokens 128 --max-num-seqs 32 --repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import ray
import yaml

from s3ft.models.tiny import build_tiny_model

HUMANEVAL = Path(__file__).resolve().parents[1] / ".." / "shared" / "datasets" / "humaneval" / "HumanEval.jsonl"
STEPS = ("generate", "judge", "paraphrase", "judge_paraphrase")


def write_rows(path: Path, copies: int) -> int:
    rows = [json.loads(line) for line in HUMANEVAL.read_text().splitlines() if line.strip()]
    with path.open("w") as fh:
        for k in range(copies):
            for row in rows:
                fh.write(json.dumps({**row, "task_id": f"{row['task_id']}/{k}"}) + "\n")
    return copies * len(rows)


def config(work: Path, out: Path, args: argparse.Namespace, stream: bool) -> Path:
    data = {
        "output_dir": str(out),
        "model": {"path": str(work / "model"), "dtype": "float32"},
        "data": {"path": str(work / "rows.jsonl"), "task": "humaneval"},
        "generation": {"backend": "vllm", "max_tokens": args.max_tokens, "shard_size": args.shard_size,
                       "max_num_seqs": args.max_num_seqs, "enforce_eager": True, "stream": stream},
        "judge": {"kind": "code", "options": {"timeout_s": 5}},
        "selection": {"strategy": "s3ft"},
    }
    path = work / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def stage_seconds(out: Path) -> dict[str, float]:
    seconds = {}
    for manifest in (out / "stages").glob("*/manifest.json"):
        found = json.loads(manifest.read_text())
        seconds[found["stage"]] = found["seconds"]
    return seconds


def run(work: Path, name: str, args: argparse.Namespace, stream: bool, env: dict[str, str]) -> tuple[float, Path]:
    out = work / name
    cmd = [sys.executable, "-m", "s3ft.cli", "data", str(config(work, out, args, stream))]
    start = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    took = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"{name} failed:\n{done.stderr[-3000:]}")
    return took, out


def spread(values: list[float]) -> str:
    return f"median {statistics.median(values):.1f} s (min {min(values):.1f}, max {max(values):.1f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--copies", type=int, default=2, help="copies of the 164 HumanEval problems")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--shard-size", type=int, default=32)
    parser.add_argument("--max-num-seqs", type=int, default=None, help="the engine's batch (vLLM's max_num_seqs); "
                        "unset: vLLM's default")
    parser.add_argument("--hidden-size", type=int, default=256)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--cpus", type=int, default=os.cpu_count() or 2, help="CPUs of the local Ray cluster")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each mode; the median counts")
    parser.add_argument("--warmups", type=int, default=1, help="untimed runs of each mode first")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-data-"))
    build_tiny_model(work / "model", hidden_size=args.hidden_size, num_layers=args.layers, max_position_embeddings=4096)
    rows = write_rows(work / "rows.jsonl", args.copies)
    ray.init(num_cpus=args.cpus, include_dashboard=False, logging_level="warning", log_to_driver=False)
    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address}

    for w in range(args.warmups):
        for stream in (False, True):
            run(work, f"warmup-{w}-{'streamed' if stream else 'staged'}", args, stream, env)
    times: dict[bool, list[float]] = {False: [], True: []}
    steps: dict[bool, list[float]] = {False: [], True: []}
    parts: list[dict[str, float]] = []
    for r in range(args.repeats):  # alternate, so that load from elsewhere on the machine hits both alike
        for stream in (False, True):
            took, out = run(work, f"{'streamed' if stream else 'staged'}-{r}", args, stream, env)
            seconds = stage_seconds(out)
            times[stream].append(took)
            # Staged, each manifest times its own stage; streamed, each times from the stream's start.
            steps[stream].append(max(seconds[s] for s in STEPS) if stream else sum(seconds[s] for s in STEPS))
            if not stream:
                parts.append(seconds)
    ray.shutdown()

    generation = [p["generate"] + p["paraphrase"] for p in parts]
    judging = [p["judge"] + p["judge_paraphrase"] for p in parts]
    print(f"rows={rows} (HumanEval x{args.copies}) shard_size={args.shard_size} max_tokens={args.max_tokens} "
          f"model=tiny llama hidden {args.hidden_size} x {args.layers} layers, 1 vllm engine "
          f"(max_num_seqs={args.max_num_seqs or 'vllm default'}), code judge, "
          f"cpus={args.cpus} repeats={args.repeats}")
    print(f"staged   s3ft data wall-clock: {spread(times[False])}; the four steps: {spread(steps[False])}")
    print(f"streamed s3ft data wall-clock: {spread(times[True])}; the four steps: {spread(steps[True])}")
    print(f"generation alone (staged generate + paraphrase): {spread(generation)}")
    print(f"judging alone (staged judge + judge paraphrase): {spread(judging)}")
    print(f"steps_ratio={statistics.median(steps[False]) / statistics.median(steps[True]):.3f}")
    print(f"ratio={statistics.median(times[False]) / statistics.median(times[True]):.3f}")


if __name__ == "__main__":
    main()
