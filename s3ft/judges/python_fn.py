"""The `python` judge: the user's own function decides, imported once from "package.module:function".

The function takes the row dict and returns a bool, a (bool, reason) pair, or a `Verdict`. A
function that raises on a row gives that row an error verdict; the batch goes on.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

from s3ft.errors import JudgeError
from s3ft.judges.base import Judge, Verdict, register


def load_target(target: str) -> Callable[[Mapping[str, Any]], Any]:
    """The callable named by "package.module:function" (dots after the colon reach attributes)."""
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise JudgeError(f"python judge target '{target}' is not 'package.module:function'")
    try:
        found: Any = importlib.import_module(module_name)
    except Exception as e:  # noqa: BLE001  (a user's module can fail to import in any way)
        why = f"{type(e).__name__}: {e}"
        raise JudgeError(f"python judge target '{target}': cannot import '{module_name}': {why}") from e
    for part in attr.split("."):
        if not hasattr(found, part):
            raise JudgeError(f"python judge target '{target}': '{module_name}' has no attribute '{attr}'")
        found = getattr(found, part)
    if not callable(found):
        raise JudgeError(f"python judge target '{target}' is a {type(found).__name__}, not a function")
    return found


def as_verdict(value: Any) -> Verdict:
    """The user's answer as a Verdict: a bool, a (bool, reason) pair, or a Verdict as it is."""
    if isinstance(value, Verdict):
        return value
    if isinstance(value, bool):
        return Verdict(value, "correct" if value else "incorrect")
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], bool):
        return Verdict(value[0], str(value[1]))
    return Verdict(False, f"error: judge function returned {type(value).__name__}, not bool, (bool, reason) or Verdict")


@register("python")
class PythonJudge(Judge):
    """The user's function as a judge; only `response` is required, the function checks the rest."""

    required_fields = ("response",)

    def __init__(self, target: str) -> None:
        self.target = target
        self.function = load_target(target)

    def judge_row(self, row: Mapping[str, Any]) -> Verdict:
        try:
            return as_verdict(self.function(dict(row)))
        except Exception as e:  # noqa: BLE001  (the user's code fails one row, never the batch)
            return Verdict(False, f"error: {type(e).__name__}: {e}"[:200])
