"""Read raw records from JSONL, parquet, a `save_to_disk` folder or the hub, one at a time.

Each record keeps where it came from (file and line) so a bad row can be named precisely, and
nothing holds the whole dataset in memory.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from s3ft.errors import DataError

JSONL_SUFFIXES = {".jsonl", ".json", ".ndjson"}


@dataclass(frozen=True)
class Record:
    file: str
    line: int  # 1-based: the JSONL line, or the row number in parquet / datasets
    row: dict[str, Any] | None
    error: str | None = None  # why the record could not even be parsed


def iter_records(path: str, split: str = "train") -> Iterator[Record]:
    local = Path(path)
    if local.is_file():
        if local.suffix in JSONL_SUFFIXES:
            return _iter_jsonl(local)
        if local.suffix == ".parquet":
            return _iter_parquet(local)
        raise DataError(f"unsupported file type '{local.suffix}' (use .jsonl or .parquet)", file=path)
    if local.is_dir():
        return _iter_disk(local, split)
    if path.startswith((".", "/", "~")) or local.suffix in JSONL_SUFFIXES | {".parquet"}:
        raise DataError("no such file or folder", file=path)
    return _iter_hub(path, split)


def _iter_jsonl(path: Path) -> Iterator[Record]:
    with path.open("rb") as fh:
        for number, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield Record(str(path), number, None, f"not valid UTF-8 (byte {exc.start})")
                continue
            try:
                row = json.loads(text)
            except json.JSONDecodeError as exc:
                yield Record(str(path), number, None, f"not valid JSON: {exc.msg} at column {exc.colno}")
                continue
            if not isinstance(row, dict):
                yield Record(str(path), number, None, f"expected a JSON object, got {type(row).__name__}")
                continue
            yield Record(str(path), number, row)


def _iter_parquet(path: Path) -> Iterator[Record]:
    import pyarrow.parquet as pq

    number = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=1024):
        for row in batch.to_pylist():
            number += 1
            yield Record(str(path), number, row)


def _iter_disk(path: Path, split: str) -> Iterator[Record]:
    import datasets

    try:
        loaded = datasets.load_from_disk(str(path))
    except FileNotFoundError as exc:
        raise DataError(f"not a dataset saved with save_to_disk: {exc}", file=str(path)) from None
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise DataError(f"split '{split}' not found; it has {', '.join(loaded)}", file=str(path))
        loaded = loaded[split]
    for number, row in enumerate(loaded, start=1):
        yield Record(str(path), number, row)


def _iter_hub(name: str, split: str) -> Iterator[Record]:
    import datasets

    try:
        loaded = datasets.load_dataset(name, split=split, streaming=True)
    except Exception as exc:  # the hub client raises many types; the user needs one message
        raise DataError(
            f"'{name}' is not a local file or folder, and loading it from the Hugging Face hub failed "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else 'no detail'}). "
            "Download it where the hub is reachable, save it as JSONL/parquet, and set data.path to that file."
        ) from None
    for number, row in enumerate(loaded, start=1):
        yield Record(name, number, row)
