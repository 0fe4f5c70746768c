"""Judge many rows: build the configured judge and spread shards over Ray tasks.

Rule judges are cheap and stateless, so each Ray task builds its own; judges that manage their own
parallelism or actors (code sandbox pool, LLM judge) set `runs_in_driver` and get whole shards.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

from s3ft.config import JudgeConfig
from s3ft.judges.base import Judge, Verdict, build_judge
from s3ft.runtime.lending import Lender, borrow

K = TypeVar("K")


def _section_options(cfg: JudgeConfig) -> dict[str, Any]:
    """The judge options that have keys of their own in the judge section."""
    return {"qa": {"match": cfg.match}, "python": {"target": cfg.target}, "llm": {"settings": cfg.llm}}.get(cfg.kind, {})


def judge_from_config(cfg: JudgeConfig) -> Judge:
    """The configured judge; its options were checked against the kind's schema when the config loaded."""
    return build_judge(cfg.kind, **_section_options(cfg), **cfg.kind_options())


def verdict_dict(verdict: Verdict) -> dict[str, Any]:
    out: dict[str, Any] = {"correct": verdict.correct, "reason": verdict.reason}
    if verdict.score is not None:
        out["score"] = verdict.score
    if verdict.audit is not None:
        out["audit"] = verdict.audit
    return out


def judge_rows(cfg: JudgeConfig, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [verdict_dict(v) for v in judge_from_config(cfg).judge_batch(rows)]


def judge_shards(
    cfg: JudgeConfig, items: Iterable[tuple[K, list[dict[str, Any]]]], lender: Lender | None = None
) -> Iterator[tuple[K, list[dict[str, Any]]]]:
    """Verdict dicts for each (key, rows), yielded as shards finish; at most a few shards in flight per CPU.

    With no CPU free outside placement groups, the tasks run in the CPUs `lender` lends (the idle
    generation engines'), round robin over its bundles, so judging never waits on CPUs held for ever."""
    import ray

    judge = judge_from_config(cfg)
    if judge.runs_in_driver or not ray.is_initialized():
        try:
            for key, rows in items:
                yield key, [verdict_dict(v) for v in judge.judge_batch(rows)]
        finally:
            judge.close()
        return
    remote = ray.remote(num_cpus=1)(judge_rows)
    slots = borrow(lender)
    cpus = sum(int(s.cpus) for s in slots) if slots else int(ray.cluster_resources().get("CPU", 1))
    limit = 2 * (cfg.num_workers or max(1, cpus))
    running: dict[Any, K] = {}
    for n, (key, rows) in enumerate(items):
        task = remote.options(scheduling_strategy=slots[n % len(slots)].strategy) if slots else remote
        running[task.remote(cfg, rows)] = key
        if len(running) >= limit:
            yield from _collect(running, block_for=1)
    while running:
        yield from _collect(running, block_for=1)


def _collect(running: dict[Any, K], block_for: int) -> Iterator[tuple[K, list[dict[str, Any]]]]:
    import ray

    ready, _ = ray.wait(list(running), num_returns=block_for)
    for ref in ready:
        yield running.pop(ref), ray.get(ref)
