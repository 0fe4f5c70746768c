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
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Self

from s3ft.config import JudgeConfig
from s3ft.judges.base import Judge
from s3ft.judges.run import judge_from_config, judge_rows, verdict_dict
from s3ft.runtime.lending import SEND_ATTEMPTS, SLOT_CHECK_S, CpuSlot, Lender, borrow, cpus, send, stranded

log = logging.getLogger(__name__)

Rows = list[dict[str, Any]]


class JudgeInto:
    """Judge each response in `field` (a list, or one text, or None) into `verdict_field`.

    A context manager: the judge is built on first use and closed on exit (it may hold engines).
    `lender`: the engines' CPUs, for judge tasks when no other CPU is free.
    """

    def __init__(self, cfg: JudgeConfig, field: str, verdict_field: str, lender: Lender | None = None) -> None:
        self.cfg, self.field, self.verdict_field, self.lender = cfg, field, verdict_field, lender
        self._judge: Judge | None = None
        self._remote: Any = None  # judge_rows as a Ray task
        self._sent = 0
        self._slots: tuple[asyncio.AbstractEventLoop, asyncio.Semaphore] | None = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._judge is not None:
            self._judge.close()
            self._judge = None

    def _get_judge(self) -> Judge:
        if self._judge is None:
            self._judge = judge_from_config(self.cfg)
            self._judge.lend(self.lender)
        return self._judge

    def _on_ray(self) -> bool:
        import ray

        return ray.is_initialized() and not self._get_judge().runs_in_driver

    def _semaphore(self) -> asyncio.Semaphore:
        """Shards judged at once (one semaphore per event loop: a staged run has a loop per step)."""
        loop = asyncio.get_running_loop()
        if self._slots is None or self._slots[0] is not loop:
            if self._on_ray():
                count = 2 * (self.cfg.num_workers or max(1, cpus(borrow(self.lender))))
            else:
                count = self._get_judge().batches_at_once
            self._slots = (loop, asyncio.Semaphore(count))
        return self._slots[1]

    def ready(self) -> bool:
        return not self._semaphore().locked()

    async def __call__(self, index: int, rows: Rows) -> Rows:
        requests = [{**row, "response": r} for row in rows for r in _responses(row[self.field])]
        verdicts = await self._judge_rows(requests) if requests else []
        it = iter(verdicts)
        for row in rows:
            found = [next(it) for _ in _responses(row[self.field])]
            row[self.verdict_field] = found if isinstance(row[self.field], list) else (found[0] if found else None)
        return rows

    async def _judge_rows(self, requests: Rows) -> Rows:
        async with self._semaphore():
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


def judge_into(cfg: JudgeConfig, field: str, verdict_field: str, lender: Lender | None = None) -> JudgeInto:
    return JudgeInto(cfg, field, verdict_field, lender)


def _responses(value: list[str] | str | None) -> list[str]:
    return value if isinstance(value, list) else [] if value is None else [value]
