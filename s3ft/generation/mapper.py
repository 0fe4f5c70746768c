"""The generation stage's mapper: generate into a row field through the engine pool, shard by shard.

The data engine and the in-domain evaluation both chain it with the judges' mapper over shards.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from s3ft.config import GenerationConfig, ModelConfig
from s3ft.generation.base import Sampling
from s3ft.runtime import placement
from s3ft.runtime.lending import CpuSlot
from s3ft.runtime.stage import Mapper, Shard


class LazyPool:
    """Engines start only when a stage has work left: a finished run re-run starts none.
    `pool()` starts them (once); `pool.cpu_slots()` lends their CPUs to the judges, none before they start."""

    def __init__(self, stack: contextlib.ExitStack, model: ModelConfig, gen: GenerationConfig,
                 record: tuple[Path, str] | None = None) -> None:
        self._stack, self._model, self._gen, self._record = stack, model, gen, record
        self._pool: Any = None

    def __call__(self) -> Any:
        if self._pool is None:
            from s3ft.generation.ray_pool import GenerationPool

            self._pool = self._stack.enter_context(GenerationPool(self._model, self._gen))
            if self._record:
                placement.record(*self._record, self._pool.placement)
        return self._pool

    def cpu_slots(self) -> list[CpuSlot]:
        return self._pool.cpu_slots() if self._pool is not None else []


def lazy_pool(stack: contextlib.ExitStack, model: ModelConfig, gen: GenerationConfig,
              record: tuple[Path, str] | None = None) -> LazyPool:
    """`record`: (run_dir, role) to write where the engines run to run_dir/logs/placement/ROLE.json."""
    return LazyPool(stack, model, gen, record)


def generate_into(
    pool: Callable[[], Any], sampling: Sampling, field: str, prompt_of: Callable[[dict[str, Any]], str | None],
    first: bool = False,
) -> Mapper:
    """Generate for the rows that have a prompt; store the completions (or the first) in `field`, else None."""

    def mapper(items: Iterable[Shard]) -> Iterator[Shard]:
        waiting: dict[int, tuple[list[dict[str, Any]], list[bool]]] = {}

        def feed() -> Iterator[tuple[int, list[str]]]:
            for index, rows in items:
                prompts = [prompt_of(row) for row in rows]
                waiting[index] = (rows, [p is not None for p in prompts])
                yield index, [p for p in prompts if p is not None]

        for index, completions in pool().generate_shards(feed(), sampling):
            rows, wanted = waiting.pop(index)
            outputs = iter(completions)
            for row, want in zip(rows, wanted, strict=True):
                row[field] = (next(outputs)[0] if first else next(outputs)) if want else None
            yield index, rows

    return mapper
