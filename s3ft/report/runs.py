"""Read what a run directory holds for the report, tolerating whatever is missing or unreadable.

A report is often made while runs are unfinished (no eval yet, no stats for an sft run), so a
missing or broken file becomes a note and "—" cells, not an error. A path that is not a directory
at all is the user's typo and is refused.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from s3ft.errors import ReportError
from s3ft.eval.results import EvalError, Results, read_results, results_path


@dataclass
class Run:
    path: Path
    label: str
    strategy: str | None
    seed: int | None
    base_model: str | None
    trained_model: str | None
    results: Results
    stats: dict[str, Any] | None
    notes: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)

    def setting(self, key: str) -> Any:
        """A config value by dotted key (`train.lr`), None when the run's config.yaml lacks it."""
        return _get(self.config, *key.split("."))

    def general_change(self) -> float | None:
        """Mean of (trained − base) over the general benchmarks scored for both, as a fraction."""
        general = self.results.general
        if general is None:
            return None
        common = [task for task in general.trained if task in general.base]
        if not common:
            return None
        return sum(general.trained[t] - general.base[t] for t in common) / len(common)

    def in_domain_change(self) -> float | None:
        scores = self.results.in_domain
        if scores is None or scores.base is None or scores.trained is None:
            return None
        return scores.trained - scores.base


def load_run(run_dir: Path) -> Run:
    if not run_dir.is_dir():
        raise ReportError(f"{run_dir}: not a run directory (expected a folder with config.yaml, data/, eval/)")
    notes: list[str] = []
    config = _read(run_dir / "config.yaml", yaml.safe_load, notes, "YAML")
    stats = _read(run_dir / "data" / "stats.json", json.loads, notes, "JSON")
    try:
        results = read_results(results_path(run_dir))
    except EvalError as exc:
        notes.append(str(exc))
        results = Results()
    config = config if isinstance(config, dict) else {}
    stats = stats if isinstance(stats, dict) else None
    return Run(
        path=run_dir,
        label=results.run or run_dir.resolve().name,
        strategy=results.strategy or _get(config, "selection", "strategy") or (stats or {}).get("strategy"),
        seed=results.seed if results.seed is not None else _get(config, "seed"),
        base_model=results.base_model or _get(config, "model", "path"),
        trained_model=results.trained_model,
        results=results,
        stats=stats,
        notes=notes,
        config=config,
    )


def _read(path: Path, parse: Any, notes: list[str], kind: str) -> Any:
    if not path.is_file():
        return None
    try:
        return parse(path.read_text())
    except (ValueError, UnicodeDecodeError, yaml.YAMLError) as exc:
        notes.append(f"{path}: not valid {kind} ({str(exc).splitlines()[0]})")
        return None


def _get(data: dict[str, Any], *keys: str) -> Any:
    for key in keys:
        if not isinstance(data, dict):
            return None
        data = data.get(key)
    return data
