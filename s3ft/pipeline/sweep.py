"""`s3ft sweep`: a grid of ordinary runs in one Ray driver, each strategy tuned on a validation split.

    s3ft sweep CONFIG --grid train.lr=1e-5,3e-5,1e-4 --grid selection.strategy=sft,ssr,s3ft --seeds 0 1 2

Every point of the grid (times every seed) is an `s3ft run` of its own under OUTPUT_DIR/runs/NAME,
resumable as any run is; all of them keep their data stages in OUTPUT_DIR/shared, so generation,
judging and paraphrase are computed once for every learning rate and seed (and generation and
judging once for ssr and s3ft). `data.validation_rows` rows are carved from the training set, by a
hash of their ids, for every run alike; each strategy's setting is the one with the best validation
accuracy, and OUTPUT_DIR/report/ states that protocol, the chosen settings' test scores and every run.
On CPUs one vLLM engine evaluates every run, loading each checkpoint in turn (generation/keeper.py).
"""

from __future__ import annotations

import itertools
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from s3ft.config import Config, load_config, parse_override
from s3ft.errors import ConfigError

log = logging.getLogger(__name__)
COMPARED = "selection.strategy"


@dataclass(frozen=True)
class Point:
    """One run of the sweep: its grid values (as given on the command line) and seed."""

    values: dict[str, str]
    seed: int

    @property
    def name(self) -> str:
        """`s3ft-lr1e-4-seed0`: the compared strategy bare, other keys by their last part.

        >>> Point({"selection.strategy": "s3ft", "train.lr": "1e-4"}, 0).name
        's3ft-lr1e-4-seed0'
        """
        parts = [v if k == COMPARED else f"{k.split('.')[-1]}{v}" for k, v in self.values.items()]
        return "-".join([*parts, f"seed{self.seed}"])


def parse_grid(items: list[str]) -> dict[str, list[str]]:
    """`["train.lr=1e-5,3e-5", ...]` → `{"train.lr": ["1e-5", "3e-5"], ...}`; a key twice is a mistake."""
    grid: dict[str, list[str]] = {}
    for item in items:
        key, raw = parse_override(item)[0], item.partition("=")[2]
        name = ".".join(key)
        values = [v.strip() for v in raw.split(",") if v.strip()]
        if not values:
            raise ConfigError(f"--grid {item}: give KEY=V1,V2,... with at least one value")
        if name in grid:
            raise ConfigError(f"--grid {name} is given twice; list all its values in one --grid")
        if name in ("output_dir", "seed", "stages_dir"):
            raise ConfigError(f"--grid {name}: the sweep sets this itself (seeds: --seeds)")
        grid[name] = values
    return grid


def points(grid: dict[str, list[str]], seeds: list[int]) -> list[Point]:
    """Seeds outermost, so an interrupted sweep has whole seeds done; then the grid in the order given."""
    combos = list(itertools.product(*grid.values()))
    return [Point(dict(zip(grid, combo, strict=True)), seed) for seed in seeds for combo in combos]


def run_config(config: str | Path, overrides: list[str], root: Path, point: Point, validation_rows: int) -> Config:
    sets = [*overrides, *(f"{k}={v}" for k, v in point.values.items()), f"output_dir={root / 'runs' / point.name}",
            f"stages_dir={root / 'shared'}", f"seed={point.seed}", f"train.seed={point.seed}",
            f"data.validation_rows={validation_rows}"]
    return load_config(config, sets)


def run_sweep(
    config: str | Path, overrides: list[str], grid: dict[str, list[str]], seeds: list[int],
    validation_rows: int | None = None,
) -> tuple[Path, Path]:
    """Run every point not yet done (each resumes like `s3ft run`), then write the sweep's report."""
    from s3ft.generation.keeper import EngineKeeper
    from s3ft.pipeline.run import run_all

    base = load_config(config, overrides)
    root = Path(base.output_dir)
    rows = validation_rows if validation_rows is not None else base.data.validation_rows
    if rows <= 0:
        raise ConfigError("a sweep picks each strategy's setting on a validation split: set data.validation_rows "
                          "(or --validation-rows) to the number of training rows to hold out")
    todo = points(grid, seeds)
    configs = [run_config(config, overrides, root, p, rows) for p in todo]  # every mistake before any work
    root.mkdir(parents=True, exist_ok=True)
    (root / "sweep.json").write_text(json.dumps(
        {"config": str(config), "overrides": overrides, "grid": grid, "seeds": seeds, "validation_rows": rows,
         "runs": [p.name for p in todo]}, indent=2) + "\n")
    with EngineKeeper() as keeper:  # one engine evaluates every run's checkpoint, where that is free (CPU)
        for index, (point, cfg) in enumerate(zip(todo, configs, strict=True), start=1):
            log.info("sweep %d/%d: %s", index, len(todo), point.name)
            run_all(cfg, keeper=keeper)
    return write_sweep_report(root)


def write_sweep_report(root: Path) -> tuple[Path, Path]:
    """OUTPUT_DIR/report/: the protocol, each strategy at its chosen setting, every run, the trade-off plot."""
    from s3ft.report import write_report
    from s3ft.report.sweep import render_sweep

    spec: dict[str, Any] = json.loads((root / "sweep.json").read_text())
    grid = spec["grid"]
    tuned = [k for k in grid if k != COMPARED]
    dirs = [root / "runs" / name for name in spec["runs"] if (root / "runs" / name).is_dir()]
    return write_report(dirs, root / "report", head=lambda runs: render_sweep(runs, tuned, grid, spec["seeds"]))
