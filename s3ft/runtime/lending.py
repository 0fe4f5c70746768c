"""CPUs that a placement group reserves and lends while its owner is idle.

The generation engines' placement groups reserve their CPUs for the whole data engine, but the stages
run one after the other: while the judges run, the engines wait. On nodes whose every CPU an engine
holds (a 1-CPU node), a judge task asking for a CPU outside those groups would wait for ever; the
judges run inside the engines' bundles instead.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class CpuSlot:
    """`cpus` CPUs of one placement-group bundle; `strategy` schedules a task into it."""

    strategy: Any  # ray.util.scheduling_strategies.PlacementGroupSchedulingStrategy
    cpus: float


Lender = Callable[[], list[CpuSlot]]  # the slots on loan now (none while the lender is not running)


def lends(lender: Lender | None, slot: CpuSlot) -> bool:
    """Is `slot` still on loan (its placement group not retired)?"""
    key = _bundle(slot)
    return lender is not None and any(_bundle(s) == key for s in lender())


def _bundle(slot: CpuSlot) -> tuple[Any, int]:
    return slot.strategy.placement_group.id, slot.strategy.placement_group_bundle_index


def cpus(slots: list[CpuSlot]) -> int:
    """The CPUs to size parallel work by: the slots', or (none borrowed) the whole cluster's."""
    import ray

    return sum(int(s.cpus) for s in slots) if slots else int(ray.cluster_resources().get("CPU", 1))


def into(remote: Any, slots: list[CpuSlot], n: int) -> Any:
    """The `n`-th task of `remote` (a Ray remote function), round robin over the slots if any."""
    return remote.options(scheduling_strategy=slots[n % len(slots)].strategy) if slots else remote


def borrow(lender: Lender | None) -> list[CpuSlot]:
    """The slots to run CPU tasks in, or [] when the cluster has a CPU free outside placement groups."""
    import ray

    slots = lender() if lender else []
    if not slots or ray.available_resources().get("CPU", 0) >= 1:
        return []
    return slots
