"""CPUs that a placement group reserves and lends to CPU tasks (the judges).

The generation engines' placement groups reserve their CPUs for the whole data engine. Judges borrow
them in two cases. Where the engines reserve every CPU of the cluster (1-CPU nodes), a judge task
asking for a CPU outside those groups would wait for ever, so it runs in an engine's bundle, busy or
not. Elsewhere judges borrow only the CPUs of engines that hold no work (staged, while the judges run,
the engines wait): a CPU outside the groups that is busy now frees up in time, while a program on a
generating engine's CPU (judging streams beside generation) slows the engine as much as it gains.
A task sent to wait can be stranded: its slot retired, or the CPUs outside the groups gone with their
node; `stranded` says so, and the caller sends it again.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class CpuSlot:
    """`cpus` CPUs of one placement-group bundle; `strategy` schedules a task into it."""

    strategy: Any  # ray.util.scheduling_strategies.PlacementGroupSchedulingStrategy
    cpus: float
    idle: bool = True  # its owner holds no work now


SLOT_CHECK_S = 5.0  # how often a task waiting for a CPU checks that it is not stranded
SEND_ATTEMPTS = 3  # a task sent this often (its CPUs lost each time) is an error, not bad luck
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


def send(remote: Any, lender: Lender | None, n: int, *args: Any) -> tuple[Any, CpuSlot | None]:
    """Start the `n`-th task of `remote` (a Ray remote function) on `args` where `borrow` says now, round
    robin over the slots if any; returns its ref and its slot (None: outside every group)."""
    slots = borrow(lender)  # asked each time: the engines lending them, and whether they are idle, change
    if not slots:
        return remote.remote(*args), None
    slot = slots[n % len(slots)]
    return remote.options(scheduling_strategy=slot.strategy).remote(*args), slot


def borrow(lender: Lender | None) -> list[CpuSlot]:
    """The slots to run CPU tasks in now, or [] to run them outside placement groups: every lent slot where
    the cluster has no CPU outside the groups; else, when none of those is free now, the idle slots."""
    import ray

    slots = lender() if lender else []
    if not slots or unreserved_cpus() < 1:
        return slots
    if ray.available_resources().get("CPU", 0) >= 1:
        return []
    return [s for s in slots if s.idle]


def stranded(lender: Lender | None, slot: CpuSlot | None) -> bool:
    """Would a task sent to `slot` (None: outside every group) wait for ever now? Its slot is no longer
    lent (its engine retired), or the CPUs outside the groups are gone (their node lost) while slots are."""
    if slot is not None:
        return not lends(lender, slot)
    return lender is not None and bool(lender()) and unreserved_cpus() < 1


def unreserved_cpus() -> float:
    """The CPUs of live nodes outside every placement group, busy or not (Ray counts a group's reserved
    CPUs under `CPU_group_<group id>`)."""
    import ray

    resources = ray.cluster_resources()
    return resources.get("CPU", 0) - sum(v for k, v in resources.items() if _GROUP_TOTAL.fullmatch(k))


_GROUP_TOTAL = re.compile(r"CPU_group_[0-9a-f]+")
