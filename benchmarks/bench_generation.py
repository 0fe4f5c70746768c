"""Throughput of our generation stage against bare vLLM, on the same prompts and the same resources.

One script runs both side by side. Each engine sits in a Ray actor placed in a one-bundle placement
group of `--cpus` CPUs, with the same environment and the same vLLM engine settings. Engines are
started and warmed up first; the timed runs alternate between the two and are timed from the driver:
  ours: the whole generate step of `s3ft data` (`run_steps` over the load stage's shards on disk:
        read each shard, render its chat prompts, `GenerationPool.generate` with as many shards per
        engine as its limits take, or `--in-flight` shards; write each result shard and the manifest);
  bare: one `vllm.LLM.generate` call on all prompts at once, already tokenized (vLLM's best case).
Each repeat times one run of each back to back, ours first and bare first in turns (so that
neither always runs in the other's wake), and gives one ratio: bare's time / ours. Each setting of
`--prompts` (512 and 4,096 by default) prints the median rates and the per-repeat ratios; its
`ratio_N` is the median of those ratios (a pair shares the machine's state of the moment, so drift
in its speed over minutes cancels within a pair but not across the medians of separate runs; the
ratio of the median rates is printed beside it), with a 90% bootstrap interval of that median (on a
shared machine the interval, not the point, says whether the goal is met). The last line is
`ratio=X`, the lower of the two.

    python benchmarks/bench_generation.py [--prompts 512 4096 --max-tokens 64 --shard-size 64 --in-flight N]
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
from s3ft.generation import Sampling
from s3ft.generation.mapper import GenerateInto
from s3ft.generation.ray_pool import GenerationPool
from s3ft.models.chat import render_prompt
from s3ft.models.tiny import build_char_tokenizer, build_tiny_model
from s3ft.runtime.shards import ShardStore
from s3ft.runtime.stage import Step, run_steps

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


def median_interval(ratios: list[float], level: float = 0.9) -> tuple[float, float]:
    """A percentile bootstrap interval of the median ratio: how far the machine's drift leaves it open."""
    from scipy.stats import bootstrap

    found = bootstrap((ratios,), statistics.median, confidence_level=level, method="percentile", vectorized=False,
                      n_resamples=2000, rng=0)
    return found.confidence_interval.low, found.confidence_interval.high


def paired(ours: Callable[[], Any], bare: Callable[[], Any], *, ours_first: bool) -> tuple[Any, Any]:
    """One timed run of each, back to back: (ours, bare) as `timed` gives them."""
    if ours_first:
        mine = timed(ours)
        return mine, timed(bare)
    theirs = timed(bare)
    return timed(ours), theirs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, nargs="+", default=[512, 4096], help="one setting per count")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--shard-size", type=int, default=64)
    parser.add_argument("--in-flight", type=int, default=None, help="shards in flight per engine (ours); "
                        "default: from the engine's limits")
    parser.add_argument("--cpus", type=int, default=1, help="CPUs of the engine's placement group")
    parser.add_argument("--repeats", type=int, default=12, help="timed pairs; the median ratio counts (an even "
                        "count runs each side first equally often)")
    args = parser.parse_args()

    ray.init(num_cpus=2 * args.cpus, include_dashboard=False, logging_level="warning", log_to_driver=False)
    work = Path(tempfile.mkdtemp(prefix="bench-gen-"))
    model_dir = build_tiny_model(work / "model")
    tokenizer = build_char_tokenizer()
    sampling = Sampling(max_tokens=args.max_tokens)
    gen = GenerationConfig(
        backend="vllm", cpus_per_engine=args.cpus, cpu_kvcache_gib=KV_CACHE_GIB, shard_size=args.shard_size
    )

    group = placement_group([{"CPU": args.cpus}], strategy="STRICT_PACK")
    # As our engines get: the same threads, and vLLM's engine core in the actor's own process (ours runs it
    # there so that it dies with the actor; left as a child process, the reference's core and front end
    # would share the bundle's CPUs as two processes, a layout ours does not have).
    env = {"VLLM_CPU_OMP_THREADS_BIND": "nobind", "OMP_NUM_THREADS": str(args.cpus),
           "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
    bare = BareVLLM.options(
        num_cpus=args.cpus, scheduling_strategy=PlacementGroupSchedulingStrategy(placement_group=group)
    ).remote(str(model_dir), env)
    ratios = []
    with GenerationPool(ModelConfig(path=str(model_dir)), gen, shards_in_flight=args.in_flight) as pool:
        print(f"engine limits: {pool.limits[0]}; shards in flight: {args.in_flight or 'from the limits'}")
        stage_runs = itertools.count()
        for count in args.prompts:
            rows = [{"id": f"q{i}", "messages": [{"role": "user", "content": f"What is {i}+{i * 7 % 100}?"}]}
                    for i in range(count)]
            loaded = write_load_stage(work / f"n{count}", rows, args.shard_size)
            prompts = [render_prompt(tokenizer, row["messages"]) for row in rows]
            token_ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]

            def ours(loaded: ShardStore = loaded) -> list[str]:
                out = ShardStore(work, "generate", f"run{next(stage_runs)}")
                mapper = GenerateInto(lambda: pool, sampling, "responses",
                                      lambda row: render_prompt(tokenizer, row["messages"]))
                run_steps(loaded, [Step("generate", out, mapper)])
                return [row["responses"][0] for row in out.rows()]

            def bare_run(token_ids: list[list[int]] = token_ids) -> list[str]:
                return ray.get(bare.generate.remote(token_ids, args.max_tokens))

            ours(), bare_run()  # warm-up: the same batch shapes as the timed runs
            runs = [paired(ours, bare_run, ours_first=repeat % 2 == 0) for repeat in range(args.repeats)]
            ours_rate = count / statistics.median(o[0] for o, _ in runs)
            bare_rate = count / statistics.median(b[0] for _, b in runs)
            each = sorted(b[0] / o[0] for o, b in runs)
            same = sum(a == b for a, b in zip(runs[-1][0][1], runs[-1][1][1], strict=True))
            print(f"prompts={count} max_tokens={args.max_tokens} shard_size={args.shard_size} cpus={args.cpus} "
                  f"repeats={args.repeats}")
            print(f"  ours (generate step: shards on disk, chat prompts, GenerationPool, 1 vllm engine): "
                  f"{ours_rate:.1f} rows/s")
            print(f"  bare (vllm.LLM.generate in a Ray actor): {bare_rate:.1f} rows/s")
            print(f"  same greedy text: {same}/{count}")
            print(f"  per-repeat ratios: {', '.join(f'{r:.3f}' for r in each)}; "
                  f"ratio of the median rates: {ours_rate / bare_rate:.3f}")
            median, (low, high) = statistics.median(each), median_interval(each)
            print(f"  median ratio {median:.3f}, 90% bootstrap interval {low:.3f}-{high:.3f}")
            print(f"ratio_{count}={median:.3f}")
            ratios.append(median)
    ray.kill(bare)
    remove_placement_group(group)
    print(f"ratio={min(ratios):.3f}")


if __name__ == "__main__":
    main()
