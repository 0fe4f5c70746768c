"""Judges: importing this package registers every built-in kind."""

from s3ft.judges import llm, math, qa  # noqa: F401
from s3ft.judges import code, python_fn  # noqa: F401
from s3ft.judges.base import JUDGES, Judge, Verdict, build_judge, register

__all__ = ["JUDGES", "Judge", "Verdict", "build_judge", "register"]
