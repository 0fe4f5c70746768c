"""The judging stage's mapper: judge a row field into verdicts, shard by shard."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from s3ft.config import JudgeConfig
from s3ft.judges.run import judge_shards
from s3ft.runtime.lending import Lender
from s3ft.runtime.stage import Mapper, Shard


def judge_into(cfg: JudgeConfig, field: str, verdict_field: str, lender: Lender | None = None) -> Mapper:
    """Judge each response in `field` (a list, or one text, or None) into `verdict_field`; `lender`: the
    CPUs of idle engines that judges may use when no other CPU is free (`s3ft.runtime.lending`)."""

    def mapper(items: Iterable[Shard]) -> Iterator[Shard]:
        waiting: dict[int, list[dict[str, Any]]] = {}

        def feed() -> Iterator[tuple[int, list[dict[str, Any]]]]:
            for index, rows in items:
                waiting[index] = rows
                yield index, [{**row, "response": r} for row in rows for r in _responses(row[field])]

        for index, verdicts in judge_shards(cfg, feed(), lender):
            rows = waiting.pop(index)
            it = iter(verdicts)
            for row in rows:
                found = [next(it) for _ in _responses(row[field])]
                row[verdict_field] = found if isinstance(row[field], list) else (found[0] if found else None)
            yield index, rows

    return mapper


def _responses(value: list[str] | str | None) -> list[str]:
    return value if isinstance(value, list) else [] if value is None else [value]
