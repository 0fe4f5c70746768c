"""A validation split carved from the training set: the rows a sweep picks its settings on.

Rows are chosen by a hash of their ids, not by position or a seed, so every run over the same data
carves the same rows whatever its strategy, seed or shard size, and the test set is never looked at.
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import time
from collections.abc import Iterator
from typing import Any

from s3ft.runtime.shards import ShardStore

SALT = "s3ft-validation:"


def rank(example_id: str) -> str:
    return hashlib.sha256((SALT + example_id).encode()).hexdigest()


def validation_ids(loaded: ShardStore, rows: int) -> set[str]:
    """The `rows` ids of lowest hash: a fixed pseudo-random sample, read with O(rows) memory.

    >>> sorted(rank(i)[:4] for i in ("a", "b"))
    ['4df1', 'b7d2']
    """
    return {i for _, i in heapq.nsmallest(rows, ((rank(r["id"]), r["id"]) for r in loaded.rows()))}


def carve(loaded: ShardStore, out: ShardStore, rows: int, shard_size: int) -> tuple[ShardStore, list[dict[str, Any]]]:
    """Write the training rows (all but the validation ones) to `out`, in order; return it and the validation rows."""
    held = validation_ids(loaded, rows)
    validation = [row for row in loaded.rows() if row["id"] in held]
    if out.finished:
        return out, validation
    started = time.time()
    kept: Iterator[dict[str, Any]] = (row for row in loaded.rows() if row["id"] not in held)
    shards = total = 0
    while batch := list(itertools.islice(kept, shard_size)):
        out.write(shards, batch)
        shards += 1
        total += len(batch)
    out.finish(shards, total, started, input_rows=loaded.manifest["input_rows"], rejected=loaded.manifest["rejected"],
               validation_rows=len(validation))
    return out, validation
