"""The judge seam: a judge decides whether a response answers a row correctly.

A judge sees plain dict rows (the JSONL rows of `s3ft judge`, or the pipeline's rows) so that
rule judges, sandboxed code, an LLM and a user's own function all fit behind one call.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from s3ft.config.judges import JUDGE_OPTIONS
from s3ft.errors import JudgeError
from s3ft.runtime.lending import Lender


@dataclass(frozen=True)
class Verdict:
    correct: bool
    reason: str
    score: float | None = None  # a graded figure where the judge has one (F1 for qa)
    audit: bool | None = None  # a rule judge's verdict on the same row, where the LLM judge is audited


class Judge:
    """Base of every judge. Subclasses set `kind` and `required_fields` and implement `judge_row`.

    Judges that batch (the LLM judge) or run programs in parallel (the code judge) override
    `judge_batch` instead; callers only ever call `judge_batch`.
    """

    kind: ClassVar[str]
    required_fields: ClassVar[tuple[str, ...]] = ("response",)
    runs_in_driver: ClassVar[bool] = False  # True for judges with their own pool or actors
    batches_at_once: ClassVar[int] = 1  # judges that run in the driver: batches it may judge at once, in threads

    def judge_row(self, row: Mapping[str, Any]) -> Verdict:
        raise NotImplementedError

    def judge_batch(self, rows: Sequence[Mapping[str, Any]]) -> list[Verdict]:
        return [self.missing_fields(row) or self.judge_row(row) for row in rows]

    def close(self) -> None:
        """Release what the judge holds (engines, pools); called once its stage is done."""

    def lend(self, lender: Lender | None) -> None:
        """CPUs a judge that sends its own Ray tasks may use when no other CPU is free (the engines';
        `s3ft.runtime.lending`). Judges without Ray tasks of their own ignore it."""

    def missing_fields(self, row: Mapping[str, Any]) -> Verdict | None:
        """An error verdict for a row that cannot be judged, never an exception for the batch."""
        missing = [f for f in self.required_fields if row.get(f) is None]
        if missing:
            return Verdict(False, f"error: missing field(s) {', '.join(missing)}")
        return None


JUDGES: dict[str, Callable[..., Judge]] = {}


def register(kind: str) -> Callable[[type[Judge]], type[Judge]]:
    """Class decorator: adding a judge is one file and this one line."""

    def add(cls: type[Judge]) -> type[Judge]:
        if kind not in JUDGE_OPTIONS:
            raise JudgeError(f"judge kind '{kind}' has no options schema in s3ft.config.judges.JUDGE_OPTIONS")
        cls.kind = kind
        JUDGES[kind] = cls
        return cls

    return add


def judge_class(kind: str) -> Callable[..., Judge]:
    import s3ft.judges  # noqa: F401  (fills the registry)

    if kind not in JUDGES:
        raise JudgeError(f"unknown judge kind '{kind}'; known: {', '.join(sorted(JUDGES))}")
    return JUDGES[kind]


def build_judge(kind: str, **options: Any) -> Judge:
    return judge_class(kind)(**options)
