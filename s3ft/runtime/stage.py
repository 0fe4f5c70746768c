"""Run one map-over-shards stage: skip finished shards, map the rest, write each as it completes."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from tqdm import tqdm

from s3ft.runtime.shards import ShardStore
from s3ft.runtime.watchdog import watchdog

Shard = tuple[int, list[dict[str, Any]]]
Mapper = Callable[[Iterable[Shard]], Iterator[Shard]]


def run_stage(source: ShardStore, out: ShardStore, mapper: Mapper, desc: str) -> ShardStore:
    """`mapper` sees only unfinished shards, read lazily; it is not called at all when none are left.
    While no shard finishes, a watchdog says what the cluster cannot schedule (`runtime.watchdog`)."""
    if out.finished:
        return out
    started = time.time()
    total = source.num_shards
    pending = [i for i in range(total) if not out.done(i)]
    with tqdm(total=total, initial=total - len(pending), desc=desc, unit="shard", dynamic_ncols=True) as bar, \
            watchdog(desc) as progress:
        if pending:
            for index, rows in mapper((i, source.read(i)) for i in pending):
                out.write(index, rows)
                bar.update(1)
                progress()
    out.finish(total, source.manifest["rows"], started, skipped_shards=total - len(pending))
    return out
