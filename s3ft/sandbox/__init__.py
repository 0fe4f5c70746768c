"""Run untrusted Python programs (the code judge's) in a sandbox: see docs/sandbox.md for what it holds."""

from s3ft.sandbox.runner import SandboxResult, default_python, run_program

__all__ = ["SandboxResult", "default_python", "run_program"]
