"""The judging steps' shared slots: a freed slot goes to the earlier step's shard first."""

from __future__ import annotations

import asyncio

import pytest

from s3ft.config import JudgeConfig
from s3ft.judges.mapper import JudgeInto, Slots


def ONE() -> int:  # noqa: N802  the slots' count, asked once per event loop
    return 1


async def _take(slots: Slots, rank: int, order: list[str], name: str, release: asyncio.Event) -> None:
    async with slots.held(rank, ONE):
        order.append(name)
        await release.wait()


def test_a_freed_slot_goes_to_the_lowest_rank_then_first_come():
    async def main() -> list[str]:
        slots, order, release = Slots(), [], asyncio.Event()
        holder = asyncio.create_task(_take(slots, 0, order, "holder", release))
        await asyncio.sleep(0)
        assert not slots.free(ONE)
        waiters = [asyncio.create_task(_take(slots, rank, order, name, release))
                   for rank, name in ((1, "paraphrase a"), (0, "response a"), (1, "paraphrase b"), (0, "response b"))]
        await asyncio.sleep(0)
        release.set()
        await asyncio.gather(holder, *waiters)
        assert slots.free(ONE)
        return order

    assert asyncio.run(main()) == ["holder", "response a", "response b", "paraphrase a", "paraphrase b"]


def test_a_waiter_cancelled_gives_its_turn_on_and_no_slot_is_lost():
    async def main() -> tuple[list[str], bool]:
        slots, order, release = Slots(), [], asyncio.Event()
        holder = asyncio.create_task(_take(slots, 0, order, "holder", release))
        await asyncio.sleep(0)
        gone = asyncio.create_task(_take(slots, 0, order, "gone", release))
        later = asyncio.create_task(_take(slots, 1, order, "later", release))
        await asyncio.sleep(0)
        gone.cancel()
        release.set()
        await asyncio.gather(holder, later)
        return order, slots.free(ONE) and gone.cancelled()

    assert asyncio.run(main()) == (["holder", "later"], True)


def test_each_event_loop_gets_its_own_slots():
    """A staged run judges each step in an event loop of its own: nothing held carries over."""
    slots = Slots()

    async def hold_and_leave() -> None:
        await slots.held(0, ONE).__aenter__()  # never released: its loop ends with it held

    asyncio.run(hold_and_leave())

    async def fresh() -> bool:
        return slots.free(ONE)

    assert asyncio.run(fresh())


@pytest.mark.parametrize("judge", [{"kind": "code"}, {"kind": "math"},
                                   {"kind": "llm", "llm": {"model": {"path": "m"}}}])
def test_the_paraphrases_judging_shares_the_responses_judge_and_slots_and_the_judge_closes_once(judge, monkeypatch):
    """One judge per stream: the LLM judge's engines are started once, not once per judging step."""
    cfg = JudgeConfig.model_validate(judge)
    with JudgeInto(cfg, "responses", "verdicts") as responses:
        with JudgeInto(cfg, "paraphrase", "paraphrase_verdict", after=responses) as paraphrases:
            shared = responses._get_judge()
            assert paraphrases._get_judge() is shared
            assert paraphrases._slots() is responses._slots()
            closed = []
            monkeypatch.setattr(shared, "close", lambda: closed.append(1))
        assert closed == []  # the later step leaves the judge to the step that made it
    assert closed == [1]
