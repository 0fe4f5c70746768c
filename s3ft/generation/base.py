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


class Backend(Protocol):
    def generate(self, prompts: Sequence[str], sampling: Sampling) -> list[list[str]]:
        """`n` completions per prompt, in prompt order, without the prompt and without EOS."""
        ...


BACKENDS: dict[str, Callable[..., Backend]] = {}
