"""A sweep's verdict: each strategy at the setting its validation split chose, with the protocol stated.

The choice reads only validation scores (rows carved from the training set, never trained on); the
test set is reported for the chosen settings, never consulted to choose them. Scores carry a standard
error: over seeds when there are several, else the binomial error of the test sample.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from s3ft.report.markdown import MISSING, table
from s3ft.report.runs import Run

COMPARED = "selection.strategy"


@dataclass(frozen=True)
class Choice:
    strategy: str
    setting: tuple[Any, ...]  # the tuned keys' values
    runs: list[Run]  # the chosen setting's runs, one per seed
    validation: float | None  # mean validation accuracy over those seeds


def setting_of(run: Run, tuned: Sequence[str]) -> tuple[Any, ...]:
    return tuple(run.setting(key) for key in tuned)


def validation_score(run: Run) -> float | None:
    val = run.results.validation
    return val.trained if val else None


def choose(runs: list[Run], tuned: Sequence[str]) -> list[Choice]:
    """Per strategy, the setting of best mean validation accuracy over seeds; ties go to the setting seen first."""
    choices = []
    for strategy in dict.fromkeys(r.strategy or MISSING for r in runs):
        groups: dict[tuple[Any, ...], list[Run]] = {}
        for run in runs:
            if (run.strategy or MISSING) == strategy:
                groups.setdefault(setting_of(run, tuned), []).append(run)
        scored = [(mean([validation_score(r) for r in group]), setting, group) for setting, group in groups.items()]
        known = [s for s in scored if s[0] is not None]
        if not known:
            continue
        best = max(known, key=lambda s: s[0])  # max keeps the first of equals
        choices.append(Choice(strategy, best[1], best[2], best[0]))
    return choices


def mean(values: Sequence[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.fmean(known) if known else None


def with_error(values: Sequence[float | None], n: int | None = None) -> str:
    """"56.0 ± 3.5": mean ± standard error over seeds, or ± the binomial error of one score on `n` rows."""
    known = [v for v in values if v is not None]
    if not known:
        return MISSING
    mu = statistics.fmean(known)
    if len(known) > 1:
        err = statistics.stdev(known) / math.sqrt(len(known))
    elif n:
        err = math.sqrt(mu * (1 - mu) / n)
    else:
        return f"{100 * mu:.1f}"
    return f"{100 * mu:.1f} ± {100 * err:.1f}"


def _column(runs: list[Run], pick: Callable[[Run], float | None], n: Callable[[Run], int | None]) -> str:
    return with_error([pick(r) for r in runs], n(runs[0]) if runs else None)


def render_sweep(runs: list[Run], tuned: Sequence[str], grid: dict[str, list[str]], seeds: Sequence[int]) -> str:
    """The protocol and the chosen settings' table (markdown), to put above the report of every run."""
    choices = choose(runs, tuned)
    val_n = next((r.results.validation.n for r in runs if r.results.validation), None)
    test_n = next((r.results.in_domain.n for r in runs if r.results.in_domain), None)
    name = next((r.results.in_domain.name or r.results.in_domain.task for r in runs if r.results.in_domain),
                "in-domain")
    general = sorted({t for r in runs if r.results.general for t in r.results.general.trained})
    tried = "; ".join(f"`{k}` ∈ {{{', '.join(v)}}}" for k, v in grid.items())
    protocol = (
        f"{len(runs)} runs: {tried}; seeds {', '.join(map(str, seeds))}. Each strategy's "
        f"{', '.join(f'`{k}`' for k in tuned) or 'setting'} is the one with the best mean {name} accuracy over the "
        f"seeds on {val_n if val_n is not None else '?'} validation rows carved from the training set (the same rows "
        "for every run, never trained on); ties go to the value listed first. The test set is not looked at to "
        f"choose; its scores ({test_n if test_n is not None else '?'} rows) are reported below for the chosen "
        "settings. ± is the standard error over seeds, or with one seed the binomial error of the test sample."
    )
    header = ["strategy", *(k.split(".")[-1] for k in tuned), "seeds", "validation", f"{name} (test)",
              "Δ in-domain", *general, "Δ general (avg)"]

    def test_n_of(run: Run) -> int | None:
        return run.results.in_domain.n if run.results.in_domain else None

    rows = []
    base = runs[0] if runs else None
    if base is not None:
        ind, val, gen = base.results.in_domain, base.results.validation, base.results.general
        rows.append(["base", *(MISSING for _ in tuned), MISSING,
                     with_error([val.base if val else None], val.n if val else None),
                     with_error([ind.base if ind else None], test_n), MISSING,
                     *(with_error([gen.base.get(t) if gen else None]) for t in general), MISSING])
    for choice in choices:
        chosen = choice.runs
        rows.append([
            choice.strategy, *(str(v) for v in choice.setting), str(len(chosen)),
            _column(chosen, validation_score, lambda r: r.results.validation.n if r.results.validation else None),
            _column(chosen, lambda r: r.results.in_domain.trained if r.results.in_domain else None, test_n_of),
            _points([r.in_domain_change() for r in chosen]),
            *(_column(chosen, lambda r, t=t: r.results.general.trained.get(t) if r.results.general else None,
                      lambda r: None) for t in general),
            _points([r.general_change() for r in chosen]),
        ])
    return "\n\n".join(["## Protocol", protocol, "## Each strategy at its chosen setting", table(header, rows)])


def _points(values: Sequence[float | None]) -> str:
    known = [v for v in values if v is not None]
    if not known:
        return MISSING
    mu = statistics.fmean(known)
    if len(known) == 1:
        return f"{100 * mu:+.1f}"
    return f"{100 * mu:+.1f} ± {100 * statistics.stdev(known) / math.sqrt(len(known)):.1f}"
