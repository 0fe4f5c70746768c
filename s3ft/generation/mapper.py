"""The generation step: generate into a row field through the engine pool, one shard at a time.

The data engine and the in-domain evaluation both chain it with the judging step over shards.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

from s3ft.config import GenerationConfig, ModelConfig
from s3ft.generation.base import Sampling

Rows = list[dict[str, Any]]


def lazy_pool(stack: contextlib.ExitStack, model: ModelConfig, gen: GenerationConfig) -> Callable[[], Any]:
    """Engines start only when a step has work left: a finished run re-run starts none."""
    holder: list[Any] = []

    def get() -> Any:
        if not holder:
            from s3ft.generation.ray_pool import GenerationPool

            holder.append(stack.enter_context(GenerationPool(model, gen)))
        return holder[0]

    return get


class GenerateInto:
    """Generate for the rows that have a prompt; store the completions (or the first) in `field`, else None.

    `priority`: when engines are full, shards of a higher priority get the next free room (the
    paraphrases of failed rows before new shards, so that rows finish while others generate).
    """

    def __init__(
        self, pool: Callable[[], Any], sampling: Sampling, field: str,
        prompt_of: Callable[[dict[str, Any]], str | None], *, first: bool = False, priority: int = 0,
    ) -> None:
        self.pool, self.sampling, self.field, self.prompt_of = pool, sampling, field, prompt_of
        self.first, self.priority = first, priority

    def ready(self) -> bool:
        return bool(self.pool().has_room(self.sampling))

    async def __call__(self, rows: Rows) -> Rows:
        prompts = [self.prompt_of(row) for row in rows]
        wanted = [p for p in prompts if p is not None]
        completions = iter(await self.pool().generate(wanted, self.sampling, self.priority) if wanted else [])
        for row, prompt in zip(rows, prompts, strict=True):
            row[self.field] = None if prompt is None else next(completions)[0] if self.first else next(completions)
        return rows
