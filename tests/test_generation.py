"""The generation stage: the hf and vllm backends, alone and inside the Ray engine pool.

Backends are compared on a memorised model: its greedy choices win by several logits, so fp32
(transformers) and bf16 (vLLM on CPU) must agree exactly, and a disagreement is a real bug.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from s3ft.config import GenerationConfig, ModelConfig
from s3ft.errors import ModelError
from s3ft.generation import BACKENDS, Sampling
from s3ft.generation.hf_backend import cut_at_stop
from s3ft.generation.keeper import EngineKeeper, same_engine_key
from s3ft.generation.ray_pool import SHARDS_WITHOUT_LIMITS, GenerationPool

Pairs = list[tuple[str, str]]
GREEDY = Sampling(max_tokens=40)
EAGER = {"enforce_eager": True}  # vLLM skips graph compilation: a much faster engine start on CPU


def wait_for(condition: Callable[[], bool], timeout: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def shards(pairs: Pairs, size: int) -> Iterator[tuple[int, list[str]]]:
    prompts = [p for p, _ in pairs]
    for start in range(0, len(prompts), size):
        yield start, prompts[start : start + size]


def run_pool(pool: GenerationPool, pairs: Pairs, sampling: Sampling, size: int = 5) -> list[list[str]]:
    """Completions in prompt order, checking that every shard comes back exactly once."""
    results: dict[int, list[list[str]]] = {}
    for key, completions in pool.generate_shards(shards(pairs, size), sampling):
        assert key not in results
        results[key] = completions
    assert sorted(results) == list(range(0, len(pairs), size))
    return [c for key in sorted(results) for c in results[key]]


def cpus_free() -> float:
    import ray

    return ray.available_resources().get("CPU", 0.0)


def alive(process: psutil.Process) -> bool:
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


# --- without Ray ---------------------------------------------------------------------------------


def test_cut_at_stop_follows_vllm() -> None:
    assert cut_at_stop("12+7=19. The answer", ["."]) == "12+7=19"
    assert cut_at_stop("abcd", ["bcd", "c"]) == "ab"  # the stop that ends first wins
    assert cut_at_stop("abcd", ["bc", "b"]) == "a"
    assert cut_at_stop("abcd", ["x"]) == "abcd"


def test_a_tensor_parallel_engine_asks_for_its_gpus_on_one_node() -> None:
    from s3ft.generation.ray_pool import engine_bundles

    gen = GenerationConfig(tensor_parallel_size=4, cpus_per_engine=3)
    assert engine_bundles(gen, on_gpu=True) == [{"GPU": 1, "CPU": 1}] * 4
    assert engine_bundles(gen, on_gpu=False) == [{"CPU": 3}]


def test_an_engine_runs_as_many_sequences_as_its_scheduler_and_kv_cache_allow() -> None:
    from s3ft.generation.base import EngineLimits

    assert EngineLimits(max_num_seqs=256, kv_cache_tokens=10**6).sequences(max_tokens=64) == 256
    assert EngineLimits(max_num_seqs=256, kv_cache_tokens=1000).sequences(max_tokens=40) == 25  # the cache binds
    assert EngineLimits(max_num_seqs=256, kv_cache_tokens=10).sequences(max_tokens=40) == 1
    assert EngineLimits(max_num_seqs=8, kv_cache_tokens=0).sequences(max_tokens=40) == 8  # no cache reported


def test_importing_generation_leaves_vllm_and_torch_unloaded() -> None:
    code = (
        "import sys, s3ft.generation as g; assert set(g.BACKENDS) >= {'vllm', 'hf'}; "
        "print('vllm' in sys.modules, 'torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_memorized_model_answers_with_wide_margins(memorized_model_dir: Path, memorized_pairs: Pairs) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(memorized_model_dir)
    model = AutoModelForCausalLM.from_pretrained(memorized_model_dir)
    for prompt, answer in memorized_pairs:
        start = len(tokenizer(prompt, add_special_tokens=False).input_ids)
        ids = tokenizer(prompt + answer + "</s>", add_special_tokens=False, return_tensors="pt").input_ids
        with torch.no_grad():
            top2 = model(ids).logits[0, start - 1 : -1].topk(2).values
        assert (top2[:, 0] - top2[:, 1]).min() > 2.0, prompt


def test_hf_backend_keeps_prompt_order_across_length_sorted_batches(
    memorized_model_dir: Path, memorized_pairs: Pairs
) -> None:
    backend = BACKENDS["hf"](memorized_model_dir, batch_size=5)
    out = backend.generate([p for p, _ in memorized_pairs], GREEDY)
    assert out == [[a] for _, a in memorized_pairs]
    assert backend.generate([], GREEDY) == []


def test_hf_backend_stops_and_samples(tiny_model_dir: Path, memorized_model_dir: Path, memorized_pairs: Pairs) -> None:
    prompt, answer = memorized_pairs[0]
    trained = BACKENDS["hf"](memorized_model_dir)
    assert trained.generate([prompt], Sampling(max_tokens=40, stop=(". ", "="))) == [[answer.split("=")[0]]]
    random = BACKENDS["hf"](tiny_model_dir)
    (samples,) = random.generate([prompt], Sampling(max_tokens=16, temperature=1.0, n=4, seed=1))
    assert len(samples) == 4 and len(set(samples)) == 4
    assert random.generate([prompt], Sampling(max_tokens=16, temperature=1.0, n=4, seed=1)) == [samples]


def test_missing_model_is_a_model_error(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="cannot load"):
        BACKENDS["hf"](tmp_path / "nowhere")


# --- real Ray actors, real vLLM ------------------------------------------------------------------


@pytest.fixture(scope="module")
def vllm_pool(ray_session: None, memorized_model_dir: Path) -> Iterator[GenerationPool]:
    model = ModelConfig(path=str(memorized_model_dir), max_model_len=256)
    with GenerationPool(model, GenerationConfig(backend="vllm", cpu_kvcache_gib=0.25), backend_options=EAGER) as pool:
        yield pool


@pytest.fixture(scope="module")
def hf_pool(ray_session: None, memorized_model_dir: Path) -> Iterator[GenerationPool]:
    with GenerationPool(ModelConfig(path=str(memorized_model_dir)), GenerationConfig(backend="hf")) as pool:
        yield pool


@pytest.mark.slow
def test_vllm_and_hf_pools_give_the_same_greedy_text(
    vllm_pool: GenerationPool, hf_pool: GenerationPool, memorized_pairs: Pairs
) -> None:
    expected = [[a] for _, a in memorized_pairs]
    assert run_pool(vllm_pool, memorized_pairs, GREEDY) == expected
    assert run_pool(hf_pool, memorized_pairs, GREEDY) == expected


@pytest.mark.slow
@pytest.mark.parametrize("pool_name", ["vllm_pool", "hf_pool"])
def test_pool_samples_n_and_cuts_at_stop_strings(
    pool_name: str, request: pytest.FixtureRequest, memorized_pairs: Pairs
) -> None:
    pool: GenerationPool = request.getfixturevalue(pool_name)
    cut = run_pool(pool, memorized_pairs, Sampling(max_tokens=40, stop=(". ", "=")))
    assert cut == [[a.split("=")[0]] for _, a in memorized_pairs]
    sampled = run_pool(pool, memorized_pairs, Sampling(max_tokens=40, temperature=2.0, n=3, seed=7))
    assert all(len(c) == 3 and all(isinstance(s, str) for s in c) for c in sampled)
    assert any(len(set(c)) > 1 for c in sampled)  # hot enough to leave the memorised path


@pytest.mark.slow
def test_pool_reads_shards_lazily(hf_pool: GenerationPool, memorized_pairs: Pairs) -> None:
    pulled = 0

    def items() -> Iterator[tuple[int, list[str]]]:
        nonlocal pulled
        for item in shards(memorized_pairs * 4, 2):
            pulled += 1
            yield item

    ahead = []
    for done, _ in enumerate(hf_pool.generate_shards(items(), GREEDY), start=1):
        ahead.append(pulled - done)
    assert done == 24 and max(ahead) < SHARDS_WITHOUT_LIMITS * len(hf_pool.actors)  # hf: a fixed count


@pytest.mark.slow
def test_vllm_engine_takes_shards_up_to_its_own_limits(vllm_pool: GenerationPool, memorized_pairs: Pairs) -> None:
    """96 sequences fit in the engine (max_num_seqs 256 on CPU): every shard is in before the first is back;
    with `shards_in_flight` set, only that many."""
    (limits,) = vllm_pool.limits
    assert limits is not None and limits.max_num_seqs == 256 and limits.kv_cache_tokens > 10_000
    for override, most in ((None, 48), (1, 1)):
        vllm_pool.shards_in_flight = override
        pulled, ahead = 0, []

        def items() -> Iterator[tuple[int, list[str]]]:
            nonlocal pulled
            for item in shards(memorized_pairs * 8, 2):
                pulled += 1
                yield item

        for done, (key, completions) in enumerate(vllm_pool.generate_shards(items(), GREEDY)):
            ahead.append(pulled - done)
            assert completions == [[a] for _, a in memorized_pairs[key % 12 : key % 12 + 2]]
        assert max(ahead) == most, ahead
    vllm_pool.shards_in_flight = None


@pytest.mark.slow
def test_pool_serves_a_new_stream_after_one_was_abandoned(hf_pool: GenerationPool, memorized_pairs: Pairs) -> None:
    stream = hf_pool.generate_shards(shards(memorized_pairs * 4, 2), GREEDY)
    next(stream)
    stream.close()  # shards still running in the engines must not count against the next stream
    assert run_pool(hf_pool, memorized_pairs, GREEDY) == [[a] for _, a in memorized_pairs]


@pytest.mark.slow
def test_engine_runs_with_its_settings_and_shutdown_hands_back_cpus_and_processes(
    ray_session: None, memorized_model_dir: Path
) -> None:
    import ray

    before = cpus_free()
    model = ModelConfig(path=str(memorized_model_dir), max_model_len=256)
    gen = GenerationConfig(backend="vllm", cpus_per_engine=2, cpu_kvcache_gib=0.25, max_num_seqs=8)
    pool = GenerationPool(model, gen, backend_options=EAGER)
    assert wait_for(lambda: cpus_free() == before - 2)
    (limits,) = pool.limits
    assert limits is not None and limits.max_num_seqs == 8  # vLLM's scheduler runs what the config says
    actor = psutil.Process(ray.get(pool.actors[0].__ray_call__.remote(lambda _: os.getpid())))
    # vLLM's engine core (and, on CPU, its executor) runs in the actor's own process: no child to outlive it
    assert actor.children(recursive=True) == []
    pool.shutdown()
    assert wait_for(lambda: cpus_free() == before), (before, cpus_free())
    assert wait_for(lambda: not alive(actor))


@pytest.mark.slow
def test_kept_engine_loads_each_checkpoint_in_turn_and_holds_no_cpu(
    ray_session: None, tiny_model_dir: Path, memorized_model_dir: Path, memorized_pairs: Pairs, tmp_path: Path
) -> None:
    """A sweep's evaluations: one engine, each checkpoint loaded into it (answers as a fresh engine's,
    nothing left of the last weights' cache); another architecture gets a fresh engine."""
    from s3ft.models.tiny import build_tiny_model

    gen = GenerationConfig(backend="vllm", cpu_kvcache_gib=0.25, enforce_eager=True)
    random_init, memorized = (ModelConfig(path=str(p), max_model_len=256)
                              for p in (tiny_model_dir, memorized_model_dir))
    expected = [[a] for _, a in memorized_pairs]
    before = cpus_free()
    with EngineKeeper() as keeper:
        assert keeper.pool(random_init, GenerationConfig(backend="hf")) is None  # vLLM only
        pool = keeper.pool(random_init, gen)
        assert pool is not None and cpus_free() == before  # training between evaluations has every CPU
        first = run_pool(pool, memorized_pairs, GREEDY)
        assert first != expected
        assert keeper.pool(memorized, gen) is pool and keeper.loads == 1
        assert run_pool(pool, memorized_pairs, GREEDY) == expected
        assert keeper.pool(random_init, gen) is pool and run_pool(pool, memorized_pairs, GREEDY) == first
        wider = ModelConfig(path=str(build_tiny_model(tmp_path / "wider", hidden_size=256)), max_model_len=256)
        assert keeper.pool(wider, gen) is not pool and keeper.started == 2
        assert pool.actors == []  # the engine of the other architecture replaced it
    assert wait_for(lambda: cpus_free() == before)


def test_a_trained_export_shares_its_base_models_engine(tiny_model_dir: Path, tmp_path: Path) -> None:
    """An export differs from its base in what saving writes: transformers' keys in tokenizer_config.json
    and the export dtype in config.json, which the engine does not read where model.dtype is set."""
    import json
    import shutil

    trained = Path(shutil.copytree(tiny_model_dir, tmp_path / "trained"))
    for name, update in [("tokenizer_config.json", {"is_local": True, "local_files_only": False}),
                         ("config.json", {"dtype": "bfloat16"})]:
        data = json.loads((trained / name).read_text())
        (trained / name).write_text(json.dumps({**data, **update}))
    gen = GenerationConfig(backend="vllm")

    def key(path: Path, dtype: str) -> str:
        return same_engine_key(ModelConfig(path=str(path), dtype=dtype), gen)

    assert key(tiny_model_dir, "float32") == key(trained, "float32")
    assert key(tiny_model_dir, "auto") != key(trained, "auto")  # there the engine's dtype is the file's
    (trained / "chat_template.jinja").write_text("{{ messages[0]['content'] }}")
    assert key(tiny_model_dir, "float32") != key(trained, "float32")


@pytest.mark.slow
def test_failed_start_is_a_model_error_and_frees_the_cluster(ray_session: None, tmp_path: Path) -> None:
    before = cpus_free()
    with pytest.raises(ModelError, match="cannot load"):
        GenerationPool(ModelConfig(path=str(tmp_path / "nowhere")), GenerationConfig(backend="hf"))
    assert wait_for(lambda: cpus_free() == before)


@pytest.mark.slow
def test_killed_engine_has_its_shards_redone_exactly_once(
    ray_session: None, memorized_model_dir: Path, memorized_pairs: Pairs
) -> None:
    import ray

    prompts = [p for p, _ in memorized_pairs]
    expected = [[a] for _, a in memorized_pairs]
    items = ((key, prompts) for key in range(8))  # each shard a second or so of work
    gen = GenerationConfig(backend="hf", num_engines=2)
    with GenerationPool(ModelConfig(path=str(memorized_model_dir)), gen) as pool:
        seen = []
        for key, completions in pool.generate_shards(items, GREEDY):
            if not seen:
                ray.kill(pool.actors[0])  # it holds at least one unfinished shard now
            seen.append(key)
            assert completions == expected
        assert pool.restarts == 1
    assert sorted(seen) == list(range(8))
