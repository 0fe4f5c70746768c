"""Build the configured judge, and judge rows into verdict dicts (also as a Ray task: `judge_rows`)."""

from __future__ import annotations

from typing import Any

from s3ft.config import JudgeConfig
from s3ft.judges.base import Judge, Verdict, build_judge


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
