"""Run untrusted Python programs (the code judge's) in a sandbox: see docs/sandbox.md for what it holds."""

from s3ft.sandbox.checked import CheckedRun, run_checked
from s3ft.sandbox.runner import Limits, SandboxResult, default_python, run_program

__all__ = ["CheckedRun", "Limits", "SandboxResult", "default_python", "run_checked", "run_program"]
