"""Run steps over shards: each shard through every step it has not been through, written to that
step's store as it leaves the step, so a crash loses only the shards in flight and a re-run skips
what is on disk.

Streamed (the default), a shard goes on to the next step as soon as it leaves one, so the engines
generate later shards while earlier ones are judged, paraphrased and judged again. Staged, every
shard goes through a step before any goes through the next. Either way each step's store ends with
the same shards and its manifest; only the order of the work differs.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from tqdm import tqdm

from s3ft.runtime.shards import ShardStore
from s3ft.runtime.watchdog import watchdog

Rows = list[dict[str, Any]]
MAX_SHARDS_ACTIVE = 256  # read ahead of the slowest step at most this many shards (the driver's memory)


class Mapper(Protocol):
    """What a step does to one shard's rows (a coroutine: it waits for engines or judges); `index`
    names the shard in what it logs."""

    async def __call__(self, index: int, rows: Rows) -> Rows: ...

    def ready(self) -> bool:
        """Would a shard start at once (an engine or judge free), rather than wait?"""
        ...


@dataclass
class Step:
    name: str  # for the progress bar, in the paper's words (generate, judge, paraphrase)
    out: ShardStore
    mapper: Mapper


def run_steps(source: ShardStore, steps: Sequence[Step], *, stream: bool = True) -> ShardStore:
    """Every shard of `source` through `steps`; returns the last step's store. While no shard leaves a
    step, a watchdog says what the cluster cannot schedule (`runtime.watchdog`)."""
    if stream:
        asyncio.run(_run(source, steps))
    else:
        for previous, step in zip([source, *(s.out for s in steps)], steps, strict=False):
            asyncio.run(_run(previous, [step]))
    return steps[-1].out if steps else source


async def _run(source: ShardStore, steps: Sequence[Step]) -> None:
    inside = [0] * len(steps)  # shards inside each step now: the watchdog names the steps that wait

    def waiting() -> str:
        return " / ".join(s.name for s, n in zip(steps, inside, strict=True) if n) or steps[0].name

    with watchdog(waiting) as progress:
        await _run_watched(source, steps, inside, progress)


async def _run_watched(
    source: ShardStore, steps: Sequence[Step], inside: list[int], progress: Callable[[], None]
) -> None:
    started = time.time()
    total = source.num_shards
    entry = {i: k for i in range(total) if (k := _first_missing(steps, i)) is not None}
    pending = deque(sorted(entry))
    done = [sum(step.out.done(i) for i in range(total)) for step in steps]
    skipped = list(done)
    changed = asyncio.Event()
    bars = [tqdm(total=total, initial=done[k], desc=s.name, unit="shard", position=k, dynamic_ncols=True)
            for k, s in enumerate(steps)]

    def finish_ready() -> None:
        """A step's manifest once all its shards are written and every step before it has one."""
        for k, step in enumerate(steps):
            if not step.out.finished:
                if done[k] < total:
                    return
                step.out.finish(total, source.manifest["rows"], started, skipped_shards=skipped[k])

    async def run_shard(index: int, first: int) -> None:
        try:
            rows = (steps[first - 1].out if first else source).read(index)
            for k in range(first, len(steps)):
                inside[k] += 1
                try:
                    rows = await steps[k].mapper(index, rows)
                finally:
                    inside[k] -= 1
                steps[k].out.write(index, rows)
                done[k] += 1
                bars[k].update(1)
                progress()
                changed.set()
        finally:
            changed.set()

    active: set[asyncio.Task[None]] = set()
    try:
        finish_ready()
        while pending or active:
            changed.clear()
            for task in [t for t in active if t.done()]:
                active.discard(task)
                task.result()  # a failed shard ends the run
            finish_ready()
            # Read the next shard only when its first step can start it, so nothing piles up unread-ahead.
            while pending and len(active) < MAX_SHARDS_ACTIVE and (
                not active or steps[entry[pending[0]]].mapper.ready()
            ):
                index = pending.popleft()
                active.add(asyncio.create_task(run_shard(index, entry[index])))
                await asyncio.sleep(0)  # it takes its engine or judge now, before the next shard is weighed
            if active:
                await changed.wait()
        finish_ready()
    finally:
        for task in active:
            task.cancel()
        await asyncio.gather(*active, return_exceptions=True)
        for bar in bars:
            bar.close()


def _first_missing(steps: Sequence[Step], index: int) -> int | None:
    return next((k for k, step in enumerate(steps) if not step.out.done(index)), None)
