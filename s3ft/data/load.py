"""The load stage: raw records → validated examples in shards, bad rows → an error or a reject.

rows in == examples out + rejects, always: every record is either kept or written to
`data/rejects.jsonl` with its file, line, field and reason.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from s3ft.config import DataConfig
from s3ft.data.prompts import Templates
from s3ft.data.sources import Record, iter_records
from s3ft.data.tasks import TASKS, FieldError, generic_fields, make_example
from s3ft.errors import DataError
from s3ft.runtime.shards import ShardStore, write_jsonl

PromptCheck = Callable[[list[dict[str, str]]], str | None]


def examples(
    cfg: DataConfig, templates: Templates, rejects: list[dict[str, Any]], check: PromptCheck | None = None
) -> Iterator[dict[str, Any]]:
    """Stream examples; bad rows raise `DataError` or, with `on_bad_row: skip`, land in `rejects`.

    `check` vets the rendered prompt (e.g. that it fits the model's context) and returns why not.
    """
    seen: set[str] = set()
    records = iter_records(cfg.path, cfg.split)
    for record in itertools.islice(records, cfg.limit):
        try:
            example = _example(cfg, templates, record, seen)
            if check is not None and (problem := check(example["messages"])):
                raise FieldError("messages", problem)
            yield example
        except FieldError as exc:
            if cfg.on_bad_row == "error":
                raise DataError(
                    f"{exc.reason} (set data.on_bad_row: skip to write bad rows to data/rejects.jsonl instead)",
                    file=record.file,
                    line=record.line,
                    field=exc.field or None,
                ) from None
            rejects.append({"file": record.file, "line": record.line, "field": exc.field, "reason": exc.reason,
                            "row": record.row})


def _example(cfg: DataConfig, templates: Templates, record: Record, seen: set[str]) -> dict[str, Any]:
    if record.row is None:
        raise FieldError("", record.error or "unreadable row")
    row = record.row
    if cfg.task == "generic":
        fields = generic_fields(row, cfg.prompt_field, cfg.response_field, cfg.messages_field)
    else:
        fields = TASKS[cfg.task](row)
    example_id = str(row.get("id", row.get("task_id", f"{cfg.task}-{record.line}")))
    if example_id in seen:
        raise FieldError("id", f"duplicate id '{example_id}'")
    seen.add(example_id)
    fields.pop("id", None)
    return make_example(fields, example_id, templates)


def run_load(
    cfg: DataConfig, templates: Templates, store: ShardStore, shard_size: int, rejects_path: Path,
    check: PromptCheck | None = None,
) -> None:
    """Write the examples as shards of `shard_size`; cheap, so an unfinished load simply runs again."""
    started = time.time()
    rejects: list[dict[str, Any]] = []
    stream = examples(cfg, templates, rejects, check)
    shards = rows = 0
    while batch := list(itertools.islice(stream, shard_size)):
        store.write(shards, batch)
        shards += 1
        rows += len(batch)
    write_jsonl(rejects_path, rejects)
    if rows == 0:
        raise DataError(f"no usable rows ({len(rejects)} rejected, see {rejects_path})", file=cfg.path)
    store.finish(shards, rows, started, rejected=len(rejects), input_rows=rows + len(rejects))
