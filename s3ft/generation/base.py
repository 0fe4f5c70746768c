"""The generator seam: a backend turns rendered prompts into completions.

Prompts arrive as text already rendered through the chat template; every backend tokenizes them
with `add_special_tokens=False`, so the vLLM and HF backends see the very same token ids.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from s3ft.config import GenerationConfig


@dataclass(frozen=True)
class Sampling:
    max_tokens: int = 256
    temperature: float = 0.0  # 0 means greedy
    top_p: float = 1.0
    n: int = 1
    stop: tuple[str, ...] = field(default_factory=tuple)
    seed: int = 0

    @classmethod
    def from_config(cls, gen: GenerationConfig, **changes: Any) -> Sampling:
        """The sampling a generation section asks for; `changes` override it (greedy eval, rft's k samples)."""
        base = cls(max_tokens=gen.max_tokens, temperature=gen.temperature, top_p=gen.top_p, stop=tuple(gen.stop),
                   seed=gen.seed)
        return replace(base, **changes)


@dataclass(frozen=True)
class EngineLimits:
    """What an engine reports once started: at most `max_num_seqs` sequences run at once, and its KV
    cache holds `kv_cache_tokens` tokens of them."""

    max_num_seqs: int
    kv_cache_tokens: int

    def sequences(self, max_tokens: int) -> int:
        """Sequences the engine can usefully run at once: its scheduler's limit, or fewer where the KV
        cache cannot hold that many answers at their full `max_tokens` (prompts not counted: vLLM
        queues what does not fit, so erring high costs nothing but a longer queue)."""
        by_cache = self.kv_cache_tokens // max(1, max_tokens) if self.kv_cache_tokens else self.max_num_seqs
        return max(1, min(self.max_num_seqs, by_cache))


class Backend(Protocol):
    def generate(self, prompts: Sequence[str], sampling: Sampling) -> list[list[str]]:
        """`n` completions per prompt, in prompt order, without the prompt and without EOS."""
        ...


BACKENDS: dict[str, Callable[..., Backend]] = {}
