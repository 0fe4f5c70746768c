"""Judges: importing this package registers every built-in kind (none imports Ray, vLLM or torch)."""

from s3ft.judges import code, llm, math, python_fn, qa  # noqa: F401
from s3ft.judges.base import JUDGES, Judge, Verdict, build_judge, register

__all__ = ["JUDGES", "Judge", "Verdict", "build_judge", "register"]
