"""Stage mappers: generate into a row field through the engine pool, judge a field into verdicts.

The data engine and the in-domain evaluation are both chains of these two over shards.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from s3ft.config import GenerationConfig, JudgeConfig, ModelConfig
from s3ft.generation.base import Sampling
from s3ft.judges.run import judge_shards
from s3ft.pipeline.stage import Mapper, Shard


def lazy_pool(stack: contextlib.ExitStack, model: ModelConfig, gen: GenerationConfig) -> Callable[[], Any]:
    """Engines start only when a stage has work left: a finished run re-run starts none."""
    holder: list[Any] = []

    def get() -> Any:
        if not holder:
            from s3ft.generation.ray_pool import GenerationPool

            holder.append(stack.enter_context(GenerationPool(model, gen)))
        return holder[0]

    return get


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


def judge_into(cfg: JudgeConfig, field: str, verdict_field: str) -> Mapper:
    """Judge each response in `field` (a list, or one text, or None) into `verdict_field`."""

    def mapper(items: Iterable[Shard]) -> Iterator[Shard]:
        waiting: dict[int, list[dict[str, Any]]] = {}

        def feed() -> Iterator[tuple[int, list[dict[str, Any]]]]:
            for index, rows in items:
                waiting[index] = rows
                yield index, [{**row, "response": r} for row in rows for r in _responses(row[field])]

        for index, verdicts in judge_shards(cfg, feed()):
            rows = waiting.pop(index)
            it = iter(verdicts)
            for row in rows:
                found = [next(it) for _ in _responses(row[field])]
                row[verdict_field] = found if isinstance(row[field], list) else (found[0] if found else None)
            yield index, rows

    return mapper


def _responses(value: list[str] | str | None) -> list[str]:
    return value if isinstance(value, list) else [] if value is None else [value]
