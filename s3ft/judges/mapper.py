"""The judging step: judge a row field into verdicts, one shard at a time, several shards at once.

Rule judges are cheap and stateless, so each shard goes out as a Ray task that builds its own
(up to two per CPU of the cluster at once). They run outside placement groups, or in the CPUs the
engines' bundles lend (`s3ft.runtime.lending`, round robin) where there are none or only busy ones
while an engine is idle, so judging never waits on CPUs held for ever. A task whose node or lent
bundle is gone (a lost node, a retired engine), or which waits for CPUs outside the groups that went
with their node, is sent again, up to `SEND_ATTEMPTS` times.
Judges that run in the driver (the code judge spreads its programs itself, the LLM judge owns engines)
judge `batches_at_once` shards at a time in threads, so the event loop that feeds the engines never
waits on them.

The judging steps of one stream (the responses', then the paraphrases') share one judge (the LLM
judge's engines are started once, not once per step, which on a cluster sized for one set of them
would leave the second waiting for GPUs the first holds) and its slots, and a free slot goes to the
earlier step's shard first: its verdicts decide what the engines paraphrase next, while the last
step's feed nothing, so judging those first would leave the engines waiting and the last paraphrases
to be generated and judged after everything else.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, Self

from s3ft.config import JudgeConfig
from s3ft.judges.base import Judge
from s3ft.judges.run import judge_from_config, judge_rows, verdict_dict
from s3ft.runtime.admission import Admission
from s3ft.runtime.lending import SEND_ATTEMPTS, SLOT_CHECK_S, CpuSlot, Lender, borrow, cpus, send, stranded

log = logging.getLogger(__name__)

Rows = list[dict[str, Any]]


class Slots:
    """Shards judged at once, shared by judging steps: a slot that frees goes to the waiting shard of
    the lowest `rank`, first come first served within a rank. Made again for each event loop (a staged
    run has a loop per step)."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._free = 0
        self._admission: Admission[None, bool]  # made by `_on`, in each loop's first call

    def _on(self, count: Callable[[], int]) -> None:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            self._loop, self._free = loop, count()
            self._admission = Admission(self._take, self._give_back)

    def _take(self, _: None) -> bool | None:
        if self._free == 0:
            return None
        self._free -= 1
        return True

    def _give_back(self, *_: object) -> None:
        self._free += 1
        self._admission.hand_out()

    def free(self, count: Callable[[], int]) -> bool:
        """Would a shard start at once? `count`: the slots, asked once per loop, of its first caller (on Ray
        it asks the cluster, which is not for every shard)."""
        self._on(count)
        return self._free > 0 and not self._admission.waiting

    @asynccontextmanager
    async def held(self, rank: int, count: Callable[[], int]) -> AsyncIterator[None]:
        self._on(count)
        await self._admission.enter(rank, None)
        try:
            yield
        finally:
            self._give_back()


class JudgeInto:
    """Judge each response in `field` (a list, or one text, or None) into `verdict_field`.

    A context manager: the judge is built on first use and closed on exit (it may hold engines).
    `lender`: the engines' CPUs, for judge tasks when no other CPU is free. `after`: an earlier
    judging step of the same stream, whose judge and slots this one shares (see above); the earlier
    step closes the judge.
    """

    def __init__(self, cfg: JudgeConfig, field: str, verdict_field: str, lender: Lender | None = None,
                 after: JudgeInto | None = None) -> None:
        self.cfg, self.field, self.verdict_field, self.lender = cfg, field, verdict_field, lender
        self._judge: Judge | None = None
        self._remote: Any = None  # judge_rows as a Ray task
        self._sent = 0
        self._after, self._rank = after, 0 if after is None else after._rank + 1
        self._own_slots: Slots | None = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._judge is not None:
            self._judge.close()
            self._judge = None

    def _get_judge(self) -> Judge:
        if self._after is not None:
            return self._after._get_judge()
        if self._judge is None:
            self._judge = judge_from_config(self.cfg)
            self._judge.lend(self.lender)
        return self._judge

    def _on_ray(self) -> bool:
        import ray

        return ray.is_initialized() and not self._get_judge().runs_in_driver

    def _count(self) -> int:
        """Shards judged at once: two per CPU the judge tasks may take on Ray, else the judge's own figure."""
        if self._on_ray():
            return 2 * (self.cfg.num_workers or max(1, cpus(borrow(self.lender))))
        return self._get_judge().batches_at_once

    def _slots(self) -> Slots:
        if self._after is not None:
            return self._after._slots()
        self._own_slots = self._own_slots or Slots()
        return self._own_slots

    def ready(self) -> bool:
        return self._slots().free(self._count)

    async def __call__(self, index: int, rows: Rows) -> Rows:
        requests = [{**row, "response": r} for row in rows for r in _responses(row[self.field])]
        verdicts = await self._judge_rows(requests) if requests else []
        it = iter(verdicts)
        for row in rows:
            found = [next(it) for _ in _responses(row[self.field])]
            row[self.verdict_field] = found if isinstance(row[self.field], list) else (found[0] if found else None)
        return rows

    async def _judge_rows(self, requests: Rows) -> Rows:
        async with self._slots().held(self._rank, self._count):
            if self._on_ray():
                return await self._judge_on_ray(requests)
            judge = self._get_judge()
            return [verdict_dict(v) for v in await asyncio.to_thread(judge.judge_batch, requests)]

    async def _judge_on_ray(self, requests: Rows) -> Rows:
        import ray
        from ray.exceptions import RayError, RayTaskError

        # Our retries, not Ray's: Ray would retry into the same bundle, which may be gone for good.
        self._remote = self._remote or ray.remote(num_cpus=1, max_retries=0)(judge_rows)
        attempts = 0
        while True:
            attempts += 1
            ref, slot = send(self._remote, self.lender, self._sent, self.cfg, requests)
            self._sent += 1
            try:
                return await self._result(ref, slot)
            except RayTaskError:
                raise  # the judge itself failed: not a matter of where it ran
            except RayError as exc:
                if attempts == SEND_ATTEMPTS:
                    raise
                log.warning("judge: a shard's task is sent again: %s", type(exc).__name__)

    async def _result(self, ref: Any, slot: CpuSlot | None) -> Rows:
        import ray
        from ray.exceptions import TaskCancelledError

        future = asyncio.wrap_future(ref.future())
        while True:
            done, _ = await asyncio.wait({future}, timeout=SLOT_CHECK_S)
            if done:
                return future.result()
            if stranded(self.lender, slot):
                ray.cancel(ref, force=True)
                raise TaskCancelledError()


def judge_into(cfg: JudgeConfig, field: str, verdict_field: str, lender: Lender | None = None,
               after: JudgeInto | None = None) -> JudgeInto:
    return JudgeInto(cfg, field, verdict_field, lender, after)


def _responses(value: list[str] | str | None) -> list[str]:
    return value if isinstance(value, list) else [] if value is None else [value]
