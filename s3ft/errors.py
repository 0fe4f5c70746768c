"""User-facing errors: one type per kind of mistake, caught once by the CLI and printed plainly."""

from __future__ import annotations


class S3FTError(Exception):
    """Base of every error that is the user's to fix; the CLI prints it without a traceback."""


class ConfigError(S3FTError):
    """A config key that is unknown, mistyped or impossible."""


class DataError(S3FTError):
    """A dataset that cannot be read, or a row that lacks what its task needs."""

    def __init__(self, message: str, *, file: str | None = None, line: int | None = None, field: str | None = None):
        where = ", ".join(p for p in (file and f"file {file}", line is not None and f"line {line}", field and f"field '{field}'") if p)
        super().__init__(f"{where}: {message}" if where else message)
        self.file, self.line, self.field, self.reason = file, line, field, message


class ModelError(S3FTError):
    """A model that cannot be found or loaded."""


class JudgeError(S3FTError):
    """A judge that cannot be built (unknown kind, bad import path)."""


class EvalError(S3FTError):
    """An evaluation that cannot run, or a results file that cannot be read."""


class ReportError(S3FTError):
    """A report that cannot be made (no such run directory)."""


class TrainingError(S3FTError):
    """Training ranks that died or failed; the message says which checkpoint a re-run resumes from."""
