"""Evaluation: the run's scores in `eval/results.json`, written section by section.

results     the schema of results.json and the helpers that merge a stage's part into it
general     general-ability benchmarks through lm-evaluation-harness (what SFT forgets)
likelihood  the base model's NLL of each source's targets (why S3FT forgets less)

`general` and `likelihood` import torch and lm-eval when called, not when this package is imported.
"""

from s3ft.eval.results import (
    EvalError,
    General,
    InDomain,
    Likelihood,
    Results,
    read_results,
    results_path,
    update_results,
    write_results,
)

__all__ = [
    "EvalError",
    "General",
    "InDomain",
    "Likelihood",
    "Results",
    "read_results",
    "results_path",
    "update_results",
    "write_results",
]
