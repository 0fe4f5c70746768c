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
sets how many engine batches the data is. The default, 32, makes the 328 rows ~10 batches, as a
real run is many (7,473 GSM8K rows at vLLM's default of 256 are 29). At vLLM's default
(`--max-num-seqs 0`) these rows are one batch, which every response shard leaves at once after the
engine's start-up: nothing can be judged before, and that first quarter of the run is the same in
both modes (figures of both settings in docs/benchmarks.md). Both modes run with the same value.

Both modes run the same command on the same local Ray cluster (started here, `--cpus` CPUs: one
for the engine, the rest for the judge), alternating, each in a fresh run directory; the first run
of each is a warm-up (`--warmups`). Each `--layouts` entry is a cluster of its own:
  shared:   the OS runs every process on any core, so on a CPU-only machine the engine and the
            judges' sandboxes take turns on the same cores, and staged judging has every core;
  own-core: the engine's process runs on the last core alone and every other process (Ray, the
            driver, the judges' tasks and sandboxes) on the others, in both modes: what a GPU node
            is, where the engine computes on a device that judging cannot use. Ray's resources are
            the same as in `shared`; only where the OS runs the processes differs.
Printed per layout: the median wall-clock of each mode over `--repeats` with the spread, the time
of the four steps alone (from the manifests), the staged run's generation and judging alone, and
`ratio_<layout>=X` (staged / streamed wall-clock, medians); last `ratio=X`, that of the last layout.

    python benchmarks/bench_data_engine.py [--copies 2 --max-tokens 128 --max-num-seqs 32 --repeats 3
                                            --layouts shared own-core]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil
import ray
import yaml

from s3ft.models.tiny import build_tiny_model

HUMANEVAL = Path(__file__).resolve().parents[1] / ".." / "shared" / "datasets" / "humaneval" / "HumanEval.jsonl"
STEPS = ("generate", "judge", "paraphrase", "judge_paraphrase")
ENGINE_TITLE = "ray::_EngineActor"  # the title Ray gives the engine actor's process
PIN_EVERY_S = 0.2  # the engine moves to its core within this of its start (it takes seconds to load)


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
                       "max_num_seqs": args.max_num_seqs or None, "enforce_eager": True, "stream": stream},
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


@contextmanager
def engine_on_own_core(cpus: int) -> Iterator[None]:
    """Every process started inside runs off the last core, except the engine's: a watcher moves each of
    its threads onto that core (threads it starts later inherit it)."""
    own, others = {cpus - 1}, set(range(cpus - 1))
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, others)  # Ray's processes and the `s3ft data` commands inherit it
    stop = threading.Event()

    def watch() -> None:
        while not stop.wait(PIN_EVERY_S):
            for proc in psutil.process_iter(["cmdline"]):
                if not " ".join(proc.info["cmdline"] or []).startswith(ENGINE_TITLE):
                    continue
                try:
                    for thread in proc.threads():
                        if os.sched_getaffinity(thread.id) != own:
                            os.sched_setaffinity(thread.id, own)
                except (psutil.Error, ProcessLookupError):  # it ended meanwhile
                    continue

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        yield
    finally:
        stop.set()
        watcher.join()
        os.sched_setaffinity(0, before)


def spread(values: list[float]) -> str:
    return f"median {statistics.median(values):.1f} s (min {min(values):.1f}, max {max(values):.1f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--copies", type=int, default=2, help="copies of the 164 HumanEval problems")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--shard-size", type=int, default=32)
    parser.add_argument("--max-num-seqs", type=int, default=32, help="the engine's batch (vLLM's max_num_seqs); "
                        "0: vLLM's default")
    parser.add_argument("--hidden-size", type=int, default=256)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--cpus", type=int, default=os.cpu_count() or 2, help="CPUs of the local Ray cluster")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each mode; the median counts")
    parser.add_argument("--warmups", type=int, default=1, help="untimed runs of each mode first")
    parser.add_argument("--layouts", nargs="+", choices=("shared", "own-core"), default=["shared", "own-core"],
                        help="where the OS runs the engine against the judges (see above); one cluster each")
    args = parser.parse_args()
    if "own-core" in args.layouts and not 2 <= args.cpus <= len(os.sched_getaffinity(0)):
        parser.error(f"--layouts own-core needs 2 to {len(os.sched_getaffinity(0))} --cpus (this process's cores)")

    work = Path(tempfile.mkdtemp(prefix="bench-data-"))
    build_tiny_model(work / "model", hidden_size=args.hidden_size, num_layers=args.layers, max_position_embeddings=4096)
    rows = write_rows(work / "rows.jsonl", args.copies)
    print(f"rows={rows} (HumanEval x{args.copies}) shard_size={args.shard_size} max_tokens={args.max_tokens} "
          f"model=tiny llama hidden {args.hidden_size} x {args.layers} layers, 1 vllm engine "
          f"(max_num_seqs={args.max_num_seqs or 'vllm default'}), code judge, "
          f"cpus={args.cpus} repeats={args.repeats}", flush=True)
    ratio = 0.0
    for layout in args.layouts:
        with engine_on_own_core(args.cpus) if layout == "own-core" else contextlib.nullcontext():
            ratio = compare(work / layout, args, layout)
    print(f"ratio={ratio:.3f}")


def compare(work: Path, args: argparse.Namespace, layout: str) -> float:
    """Staged against streamed, alternating, on a Ray cluster of this layout's; prints the figures."""
    work.mkdir()
    for name in ("model", "rows.jsonl"):
        (work / name).symlink_to(work.parent / name)
    ray.init(num_cpus=args.cpus, include_dashboard=False, logging_level="warning", log_to_driver=False)
    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address}
    try:
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
    finally:
        ray.shutdown()

    generation = [p["generate"] + p["paraphrase"] for p in parts]
    judging = [p["judge"] + p["judge_paraphrase"] for p in parts]
    print(f"[{layout}] staged   s3ft data wall-clock: {spread(times[False])}; the four steps: {spread(steps[False])}")
    print(f"[{layout}] streamed s3ft data wall-clock: {spread(times[True])}; the four steps: {spread(steps[True])}")
    print(f"[{layout}] generation alone (staged generate + paraphrase): {spread(generation)}")
    print(f"[{layout}] judging alone (staged judge + judge paraphrase): {spread(judging)}")
    print(f"steps_ratio_{layout}={statistics.median(steps[False]) / statistics.median(steps[True]):.3f}")
    ratio = statistics.median(times[False]) / statistics.median(times[True])
    print(f"ratio_{layout}={ratio:.3f}", flush=True)
    return ratio


if __name__ == "__main__":
    main()
