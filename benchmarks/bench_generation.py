"""Throughput of our generation stage against bare vLLM, on the same prompts and the same resources.

One script runs both side by side. Each engine sits in a Ray actor placed in a one-bundle placement
group of `--cpus` CPUs, with the same environment and the same vLLM engine settings. Engines are
started and warmed up first; the timed runs alternate between the two and are timed from the driver:
  ours: the whole generate stage of `s3ft data` (`run_stage` over the load stage's shards on disk:
        read each shard, render its chat prompts, `GenerationPool.generate_shards` with
        `--in-flight` shards per engine, write each result shard and the manifest);
  bare: one `vllm.LLM.generate` call on all prompts at once, already tokenized (vLLM's best case).
The last line is `ratio=X` (ours / bare, rows per second).

    python benchmarks/bench_generation.py [--prompts 512 --max-tokens 64 --shard-size 64 --in-flight 2]
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ray
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from s3ft.config import GenerationConfig, ModelConfig
from s3ft.generation import GenerationPool, Sampling
from s3ft.generation.mapper import generate_into
from s3ft.models.chat import render_prompt
from s3ft.models.tiny import build_char_tokenizer, build_tiny_model
from s3ft.runtime.shards import ShardStore
from s3ft.runtime.stage import run_stage

KV_CACHE_GIB = 1.0


@ray.remote
class BareVLLM:
    """`vllm.LLM` as a user would drive it, in the same kind of actor as our engines."""

    def __init__(self, model_path: str, env: dict[str, str]) -> None:
        os.environ.update(env)
        os.environ.pop("VLLM_CPU_KVCACHE_SPACE", None)
        from vllm import LLM

        self.llm = LLM(model_path, seed=0, kv_cache_memory_bytes=int(KV_CACHE_GIB * 2**30), disable_log_stats=True)

    def generate(self, token_ids: list[list[int]], max_tokens: int) -> list[str]:
        from vllm import SamplingParams

        prompts = [{"prompt_token_ids": ids} for ids in token_ids]
        outputs = self.llm.generate(prompts, SamplingParams(max_tokens=max_tokens, temperature=0.0), use_tqdm=False)
        return [o.outputs[0].text for o in outputs]


def write_load_stage(work: Path, rows: list[dict[str, Any]], shard_size: int) -> ShardStore:
    """The load stage's output on disk, as the generate stage finds it in a run directory."""
    loaded = ShardStore(work, "load", "bench")
    for index in range(0, len(rows), shard_size):
        loaded.write(index // shard_size, rows[index : index + shard_size])
    loaded.finish(-(-len(rows) // shard_size), len(rows), time.time())
    return loaded


def timed(run: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    result = run()
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=512)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--shard-size", type=int, default=64)
    parser.add_argument("--in-flight", type=int, default=2, help="shards in flight per engine (ours)")
    parser.add_argument("--cpus", type=int, default=1, help="CPUs of the engine's placement group")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs of each; the median counts")
    args = parser.parse_args()

    ray.init(num_cpus=2 * args.cpus, include_dashboard=False, logging_level="warning", log_to_driver=False)
    work = Path(tempfile.mkdtemp(prefix="bench-gen-"))
    model_dir = build_tiny_model(work / "model")
    tokenizer = build_char_tokenizer()
    rows = [{"id": f"q{i}", "messages": [{"role": "user", "content": f"What is {i}+{i * 7 % 100}?"}]}
            for i in range(args.prompts)]
    loaded = write_load_stage(work, rows, args.shard_size)
    prompts = [render_prompt(tokenizer, row["messages"]) for row in rows]
    sampling = Sampling(max_tokens=args.max_tokens)
    gen = GenerationConfig(
        backend="vllm", cpus_per_engine=args.cpus, cpu_kvcache_gib=KV_CACHE_GIB, shard_size=args.shard_size
    )

    group = placement_group([{"CPU": args.cpus}], strategy="STRICT_PACK")
    env = {"VLLM_CPU_OMP_THREADS_BIND": "nobind", "OMP_NUM_THREADS": str(args.cpus)}  # as our engines get
    bare = BareVLLM.options(
        num_cpus=args.cpus, scheduling_strategy=PlacementGroupSchedulingStrategy(placement_group=group)
    ).remote(str(model_dir), env)
    token_ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]

    with GenerationPool(ModelConfig(path=str(model_dir)), gen, shards_in_flight=args.in_flight) as pool:

        stage_runs = itertools.count()

        def ours() -> list[str]:
            out = ShardStore(work, "generate", f"run{next(stage_runs)}")
            mapper = generate_into(lambda: pool, sampling, "responses", lambda row: render_prompt(tokenizer, row["messages"]))
            run_stage(loaded, out, mapper, "generate")
            return [row["responses"][0] for row in out.rows()]

        def bare_run() -> list[str]:
            return ray.get(bare.generate.remote(token_ids, args.max_tokens))

        ours(), bare_run()  # warm-up: the same batch shapes as the timed runs
        # Alternate the two so that load from elsewhere on the machine hits both alike.
        runs = [(timed(ours), timed(bare_run)) for _ in range(args.repeats)]
    ray.kill(bare)
    remove_placement_group(group)

    ours_rate = len(prompts) / statistics.median(o[0] for o, _ in runs)
    bare_rate = len(prompts) / statistics.median(b[0] for _, b in runs)
    ours_text, bare_text = runs[-1][0][1], runs[-1][1][1]
    same = sum(a == b for a, b in zip(ours_text, bare_text))
    print(
        f"prompts={len(prompts)} max_tokens={args.max_tokens} shard_size={args.shard_size} "
        f"in_flight={args.in_flight} cpus={args.cpus} repeats={args.repeats}"
    )
    print(f"ours (generate stage: shards on disk, chat prompts, GenerationPool, 1 vllm engine): {ours_rate:.1f} rows/s")
    print(f"bare (vllm.LLM.generate in a Ray actor): {bare_rate:.1f} rows/s")
    print(f"same greedy text: {same}/{len(prompts)}")
    print(f"ratio={ours_rate / bare_rate:.3f}")


if __name__ == "__main__":
    main()
