"""The generation step: generate into a row field through the engine pool, one shard at a time.

The data engine and the in-domain evaluation both chain it with the judging step over shards.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from s3ft.config import GenerationConfig, ModelConfig
from s3ft.generation.base import Sampling
from s3ft.runtime import placement
from s3ft.runtime.lending import CpuSlot

if TYPE_CHECKING:
    from s3ft.generation.keeper import EngineKeeper

Rows = list[dict[str, Any]]


class LazyPool:
    """Engines start only when a step has work left: a finished run re-run starts none.
    `pool()` starts them (once), or takes the keeper's; `pool.cpu_slots()` lends their CPUs to the judges,
    none before they start."""

    def __init__(self, stack: contextlib.ExitStack, model: ModelConfig, gen: GenerationConfig,
                 record: tuple[Path, str] | None = None, keeper: EngineKeeper | None = None) -> None:
        self._stack, self._model, self._gen, self._record, self._keeper = stack, model, gen, record, keeper
        self._pool: Any = None

    def __call__(self) -> Any:
        if self._pool is None:
            from s3ft.generation.ray_pool import GenerationPool

            kept = self._keeper.pool(self._model, self._gen) if self._keeper is not None else None
            self._pool = kept or self._stack.enter_context(GenerationPool(self._model, self._gen))
            if self._record:
                placement.record(*self._record, self._pool.placement)
        return self._pool

    def cpu_slots(self) -> list[CpuSlot]:
        return self._pool.cpu_slots() if self._pool is not None else []


def lazy_pool(stack: contextlib.ExitStack, model: ModelConfig, gen: GenerationConfig,
              record: tuple[Path, str] | None = None, keeper: EngineKeeper | None = None) -> LazyPool:
    """`record`: (run_dir, role) to write where the engines run to run_dir/logs/placement/ROLE.json;
    `keeper`: an EngineKeeper (generation/keeper.py) whose engines to use where it keeps them."""
    return LazyPool(stack, model, gen, record, keeper)


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

    async def __call__(self, index: int, rows: Rows) -> Rows:
        prompts = [self.prompt_of(row) for row in rows]
        wanted = [p for p in prompts if p is not None]
        completions = iter(await self.pool().generate(wanted, self.sampling, self.priority, key=index) if wanted else [])
        for row, prompt in zip(rows, prompts, strict=True):
            row[self.field] = None if prompt is None else next(completions)[0] if self.first else next(completions)
        return rows
