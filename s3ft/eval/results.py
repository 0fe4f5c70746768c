"""The schema of `eval/results.json`: one file per run that each evaluation stage adds its part to.

Stages run at different times (in-domain, general benchmarks, the likelihood diagnostic; base model
and trained model apart), so a stage merges its section into the file instead of rewriting it.
Scores are fractions (0.569), as lm-evaluation-harness reports them; the report shows percent.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from s3ft.errors import EvalError

RESULTS_FILE = Path("eval") / "results.json"


class _Section(BaseModel):
    # Unknown keys are kept, so fields a newer stage adds survive a merge by an older one.
    model_config = ConfigDict(extra="allow")


class InDomain(_Section):
    """The fine-tuning task's own test set, scored by its judge."""

    task: str
    metric: str
    name: str | None = None  # what the report calls the set (eval.name); `task` is the adapter
    n: int | None = None
    base: float | None = None
    trained: float | None = None


class General(_Section):
    """Headline metric per lm-evaluation-harness task, for the base and the trained model."""

    base: dict[str, float] = {}
    trained: dict[str, float] = {}


class Likelihood(_Section):
    """Mean per-token NLL of each source's targets under the base model (the paper's Table 1)."""

    base_model: str
    nll: dict[str, float]
    rows: dict[str, int]


class Results(_Section):
    run: str | None = None
    strategy: str | None = None
    seed: int | None = None
    base_model: str | None = None
    trained_model: str | None = None
    in_domain: InDomain | None = None
    validation: InDomain | None = None  # the split carved from the training set (data.validation_rows)
    general: General | None = None
    likelihood: Likelihood | None = None


def results_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / RESULTS_FILE


def read_results(path: str | Path) -> Results:
    """The results at `path`; an empty `Results` when the file does not exist yet."""
    path = Path(path)
    if not path.is_file():
        return Results()
    try:
        return Results.model_validate(json.loads(path.read_text()))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise EvalError(f"{path}: not valid JSON ({exc})") from None
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise EvalError(f"{path}: not an s3ft results file ({problems})") from None


def write_results(path: str | Path, results: Results) -> Path:
    """Write atomically, so a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(results.model_dump(mode="json", exclude_none=True), indent=2) + "\n")
    tmp.replace(path)
    return path


def update_results(path: str | Path, **parts: Any) -> Results:
    """Merge `parts` into the file: a top-level value replaces the old one; a section merges field by field.

    So `update_results(p, general={"trained": {...}})` keeps `general.base`, and the in-domain stage can
    write `base` and `trained` in two calls. A field given as None is left as it was.
    """
    merged = read_results(path).model_dump(mode="json", exclude_none=True)
    for key, value in parts.items():
        if value is None:
            continue
        if isinstance(value, BaseModel):
            value = value.model_dump(mode="json", exclude_none=True)
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            value = merged[key] | {k: v for k, v in value.items() if v is not None}
        merged[key] = value
    try:
        results = Results.model_validate(merged)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise EvalError(f"{path}: refusing to write invalid results ({problems})") from None
    write_results(path, results)
    return results
