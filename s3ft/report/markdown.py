"""The comparison report as markdown: scores against the base model, where the targets came from,
how likely the base model found them, and the seeds. Scores show in percent, changes in points."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from s3ft.report.runs import Run
from s3ft.selection import SOURCES

MISSING = "—"


def pct(x: float | None) -> str:
    return MISSING if x is None else f"{100 * x:.1f}"


def points(x: float | None) -> str:
    return MISSING if x is None else f"{100 * x:+.1f}"


def render(runs: list[Run], plot_name: str | None, head: str | None = None) -> str:
    """The report; `head` (markdown sections, e.g. a sweep's protocol and choices) goes above the scores."""
    parts = [
        "# S3FT comparison report",
        (
            f"{len(runs)} run(s). Scores in percent; Δ is the change from the base model in points "
            "(negative on general benchmarks = forgetting)."
        ),
        *([head] if head else []),
        "## Scores",
        _scores(runs),
    ]
    if plot_name:
        parts.append(f"![change from base per run]({plot_name})")
    parts += [
        "## Training targets by source",
        _sources(runs),
        "## Likelihood of the targets under the base model",
        (
            "Mean negative log-likelihood per target token (rows scored): lower means closer to what the base "
            "model would write itself, so training on it moves the model less."
        ),
        _likelihood(runs),
        "## Runs",
        _runs(runs),
    ]
    notes = [f"- {run.label}: {note}" for run in runs for note in run.notes]
    if notes:
        parts += ["## Notes", "\n".join(notes)]
    return "\n\n".join(parts) + "\n"


def table(header: list[str], rows: Iterable[list[str]]) -> str:
    lines = [header, ["---"] * len(header), *rows]
    return "\n".join("| " + " | ".join(cell.replace("|", "\\|") for cell in line) + " |" for line in lines)


def _in_domain_key(run: Run) -> tuple[str, str] | None:
    scores = run.results.in_domain
    return (scores.name or scores.task, scores.metric) if scores else None


def _in_domain_columns(runs: list[Run]) -> list[tuple[str, str]]:
    """One column per (test set, metric): runs on different tasks can share a report."""
    return list(dict.fromkeys(key for run in runs if (key := _in_domain_key(run))))


def _general_columns(runs: list[Run]) -> list[str]:
    tasks = (t for r in runs if r.results.general for t in (*r.results.general.base, *r.results.general.trained))
    return list(dict.fromkeys(tasks))


def _scores(runs: list[Run]) -> str:
    in_domain, general = _in_domain_columns(runs), _general_columns(runs)
    header = ["run", "strategy", "seed", *(f"{task} {metric}" for task, metric in in_domain), "Δ in-domain",
              *general, "Δ general (avg)"]
    rows = [_base_row(label, group, in_domain, general) for label, group in _by_base_model(runs)]
    for run in runs:
        own = _in_domain_key(run)
        trained = run.results.general.trained if run.results.general else {}
        rows.append([
            run.label, run.strategy or MISSING, MISSING if run.seed is None else str(run.seed),
            *(pct(run.results.in_domain.trained) if col == own else MISSING for col in in_domain),
            points(run.in_domain_change()),
            *(pct(trained.get(task)) for task in general),
            points(run.general_change()),
        ])
    sizes = dict.fromkeys(f"{s.name or s.task} n={s.n}" for r in runs if (s := r.results.in_domain) and s.n is not None)
    notes = "In-domain test sets: " + ", ".join(sizes) + ". " if sizes else ""
    notes += "Δ general (avg): mean of (trained − base) over the general benchmarks scored for the run and its base."
    return table(header, rows) + "\n\n" + notes


def _by_base_model(runs: list[Run]) -> list[tuple[str, list[Run]]]:
    """One base row per base model: runs of different base models have different baselines."""
    groups: dict[str | None, list[Run]] = {}
    for run in runs:
        groups.setdefault(run.base_model, []).append(run)
    if len(groups) == 1:
        return [("base", runs)]
    return [(f"base ({Path(model).name if model else 'unknown'})", group) for model, group in groups.items()]


def _base_row(label: str, runs: list[Run], in_domain: list[tuple[str, str]], general: list[str]) -> list[str]:
    """The base model's scores, each taken from the first run that measured it."""

    def first(values: Iterable[float | None]) -> float | None:
        return next((v for v in values if v is not None), None)

    cells = [label, MISSING, MISSING]
    cells += [pct(first(r.results.in_domain.base for r in runs if _in_domain_key(r) == col)) for col in in_domain]
    cells.append(MISSING)
    cells += [pct(first(r.results.general.base.get(t) for r in runs if r.results.general)) for t in general]
    return cells + [MISSING]


def _sources(runs: list[Run]) -> str:
    rows = []
    for run in runs:
        stats = run.stats or {}
        total = stats.get("total")
        share = stats.get("share") or {}
        cells = [_count_share(stats.get(s), share.get(s), total) for s in SOURCES]
        leaked = stats.get("paraphrase_leaked")
        rows.append([run.label, stats.get("strategy") or run.strategy or MISSING,
                     MISSING if total is None else str(total), *cells, MISSING if leaked is None else str(leaked)])
    note = ("paraphrases leaked: rewrites the judge passed but the leak check refused for speaking of their prompt "
            "(\"the reference solution\", \"here is my rewrite\"); their rows train on gold.")
    return table(["run", "strategy", "total", *SOURCES, "paraphrases leaked"], rows) + "\n\n" + note


def _count_share(count: int | None, share: float | None, total: int | None) -> str:
    """"3699 (49.5%)"; the share computed from the counts when stats.json has none."""
    if count is None:
        return MISSING
    if share is None and total:
        share = count / total
    return str(count) if share is None else f"{count} ({pct(share)}%)"


def _likelihood(runs: list[Run]) -> str:
    rows = []
    for run in runs:
        lik = run.results.likelihood
        if lik is None:
            rows.append([run.label, MISSING, *(MISSING for _ in SOURCES)])
            continue
        rows.append([run.label, lik.base_model, *(
            f"{lik.nll[s]:.3f} ({lik.rows.get(s, MISSING)})" if s in lik.nll else MISSING for s in SOURCES)])
    return table(["run", "base model", *SOURCES], rows)


def _runs(runs: list[Run]) -> str:
    return table(
        ["run", "directory", "strategy", "seed", "base model", "trained model"],
        ([r.label, str(r.path), r.strategy or MISSING, MISSING if r.seed is None else str(r.seed),
          r.base_model or MISSING, r.trained_model or MISSING] for r in runs),
    )
