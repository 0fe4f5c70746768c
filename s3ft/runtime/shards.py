"""A stage's output on disk: numbered JSONL shards and a manifest, so a crash loses one shard at most.

A shard file appears only when complete (written to a temporary name, then renamed), so "the file
exists" is the whole resume protocol. The directory name carries the stage's config hash: changed
settings get a fresh directory instead of stale shards.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any


def write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    count = 0
    with tmp.open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
            count += 1
        fh.flush()
        os.fsync(fh.fileno())
    tmp.replace(path)
    return count


def file_digest(path: Path) -> str:
    """sha256 of a file, read in blocks: what a stage that consumes the file is keyed by."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


class ShardStore:
    def __init__(self, run_dir: Path, stage: str, key: str):
        self.stage, self.key = stage, key
        self.dir = Path(run_dir) / "stages" / f"{stage}-{key}"
        self.manifest_path = self.dir / "manifest.json"

    def path(self, index: int) -> Path:
        return self.dir / f"shard-{index:05d}.jsonl"

    def done(self, index: int) -> bool:
        return self.path(index).is_file()

    def write(self, index: int, rows: list[dict[str, Any]]) -> None:
        write_jsonl(self.path(index), rows)

    def read(self, index: int) -> list[dict[str, Any]]:
        return read_jsonl(self.path(index))

    @property
    def finished(self) -> bool:
        return self.manifest_path.is_file()

    @property
    def manifest(self) -> dict[str, Any]:
        return json.loads(self.manifest_path.read_text())

    @property
    def num_shards(self) -> int:
        return int(self.manifest["shards"])

    def shards(self) -> Iterator[tuple[int, list[dict[str, Any]]]]:
        """Every shard in order, read one at a time."""
        for index in range(self.num_shards):
            yield index, self.read(index)

    def rows(self) -> Iterator[dict[str, Any]]:
        for _, rows in self.shards():
            yield from rows

    def finish(self, shards: int, rows: int, started: float, **extra: Any) -> None:
        manifest = {
            "stage": self.stage,
            "key": self.key,
            "shards": shards,
            "rows": rows,
            "seconds": round(time.time() - started, 3),
            **extra,
        }
        self.dir.mkdir(parents=True, exist_ok=True)
        self.manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
