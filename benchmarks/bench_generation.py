"""Throughput of our generation pool against bare vLLM, on the same prompts and the same resources.

Both sides run in a Ray actor placed in a one-bundle placement group of `--cpus` CPUs with the
same environment and the same vLLM engine settings; only generation is timed (engines are started
and warmed up first; timed runs alternate between the two), from the driver, so both include the
driver-to-actor round trip:
  ours: `GenerationPool.generate_shards`, the prompts in shards of `--shard-size`;
  bare: one `vllm.LLM.generate` call on all prompts at once (vLLM's best case).
The last line is `ratio=X` (ours / bare, rows per second).

    python benchmarks/bench_generation.py [--prompts 256 --max-tokens 64 --shard-size 64 --in-flight 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any

import ray
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from s3ft.config import GenerationConfig, ModelConfig
from s3ft.generation import GenerationPool, Sampling
from s3ft.models.tiny import build_char_tokenizer, build_tiny_model

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


def timed(run: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    result = run()
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=256)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--shard-size", type=int, default=64)
    parser.add_argument("--in-flight", type=int, default=2, help="shards in flight per engine (ours)")
    parser.add_argument("--cpus", type=int, default=1, help="CPUs of the engine's placement group")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs of each; the median counts")
    args = parser.parse_args()

    ray.init(num_cpus=2 * args.cpus, include_dashboard=False, logging_level="warning", log_to_driver=False)
    model_dir = build_tiny_model(tempfile.mkdtemp(prefix="bench-gen-"))
    tokenizer = build_char_tokenizer()
    prompts = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": f"What is {i}+{i * 7 % 100}?"}], tokenize=False, add_generation_prompt=True
        )
        for i in range(args.prompts)
    ]
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

        def ours() -> list[str]:
            shards = ((i, prompts[i : i + args.shard_size]) for i in range(0, len(prompts), args.shard_size))
            done = dict(pool.generate_shards(shards, sampling))
            return [c[0] for i in sorted(done) for c in done[i]]

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
    print(f"ours (GenerationPool, 1 vllm engine): {ours_rate:.1f} rows/s")
    print(f"bare (vllm.LLM.generate in a Ray actor): {bare_rate:.1f} rows/s")
    print(f"same greedy text: {same}/{len(prompts)}")
    print(f"ratio={ours_rate / bare_rate:.3f}")


if __name__ == "__main__":
    main()
