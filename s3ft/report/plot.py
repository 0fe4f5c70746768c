"""The report's figure. For a few runs: per run, the in-domain gain next to the general-ability change
(bars). For a sweep: the trade-off itself — in-domain change against held-out change, a point per
setting (mean over its seeds, with standard-error bars), a line per strategy through its settings —
which shows whether a strategy buys the same in-domain gain with less forgetting."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from s3ft.report.runs import Run

BARS = (("in-domain", Run.in_domain_change, "#1f77b4"), ("general (avg)", Run.general_change, "#d62728"))
# Config keys that tell runs apart without being a setting of the method.
NOT_SETTINGS = {"output_dir", "seed", "train.seed", "selection.strategy", "stages_dir", "train.wandb_run_name"}
COLOURS = {"sft": "#d62728", "ssr": "#ff7f0e", "s3ft": "#2ca02c", "rft": "#9467bd"}


def plot_report(runs: list[Run], path: Path) -> Path:
    """The trade-off plot when some strategy has several runs (settings or seeds), else the bars."""
    strategies = [r.strategy for r in runs]
    if any(strategies.count(s) > 1 for s in set(strategies)):
        return plot_tradeoff(runs, path)
    return plot_changes(runs, path)


def _figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure  # a bare Figure renders with Agg: no GUI backend, no global state

    return Figure(figsize=(width, height), dpi=110, layout="constrained")


def plot_changes(runs: list[Run], path: Path) -> Path:
    """Grouped bars of Δ in-domain and Δ general average (points) per run; a note where nothing is scored."""
    fig = _figure(max(5.0, 1.4 * len(runs) + 2.5), 4.0)
    ax = fig.add_subplot()
    width = 0.38
    scored = False
    for k, (name, change, colour) in enumerate(BARS):
        values = [change(run) for run in runs]
        heights = [math.nan if v is None else 100 * v for v in values]
        offsets = [i + (k - 0.5) * width for i in range(len(runs))]
        bars = ax.bar(offsets, heights, width, label=name, color=colour)
        ax.bar_label(bars, labels=["" if v is None else f"{100 * v:+.1f}" for v in values], padding=2, fontsize=8)
        scored = scored or any(v is not None for v in values)
    ax.axhline(0.0, color="black", linewidth=0.8)
    ax.set_xticks(range(len(runs)), [f"{r.label}\n({r.strategy or '?'})" for r in runs], fontsize=8)
    ax.set_ylabel("change from base (points)")
    ax.set_title("S3FT comparison: change from the base model")
    ax.legend(fontsize=8)
    if not scored:
        ax.text(0.5, 0.5, "no evaluation results yet", transform=ax.transAxes, ha="center", va="center")
    return _save(fig, path)


def setting_keys(runs: list[Run]) -> list[str]:
    """The dotted config keys whose values differ between the runs: what a sweep varied.

    >>> from s3ft.eval.results import Results
    >>> runs = [Run(Path(n), n, "sft", 0, None, None, Results(), None, config={"train": {"lr": lr}, "seed": s})
    ...         for n, lr, s in [("a", 1e-4, 0), ("b", 3e-4, 0), ("c", 1e-4, 1)]]
    >>> setting_keys(runs)
    ['train.lr']
    """
    values: dict[str, set[str]] = {}
    for run in runs:
        for key, value in _leaves(run.config):
            values.setdefault(key, set()).add(repr(value))
    return [k for k, v in values.items() if len(v) > 1 and k not in NOT_SETTINGS]


def _leaves(data: Any, prefix: str = "") -> list[tuple[str, Any]]:
    if not isinstance(data, dict):
        return [(prefix, data)]
    return [leaf for k, v in data.items() for leaf in _leaves(v, f"{prefix}.{k}" if prefix else str(k))]


def plot_tradeoff(runs: list[Run], path: Path) -> Path:
    """Δ in-domain (x) against Δ general (y), points; one line per strategy through its settings."""
    keys = setting_keys(runs)
    fig = _figure(6.4, 4.8)
    ax = fig.add_subplot()
    ax.axhline(0.0, color="grey", linewidth=0.6)
    ax.axvline(0.0, color="grey", linewidth=0.6)
    ax.plot([0], [0], marker="*", markersize=12, color="black", linestyle="none", label="base")
    scored = repeated = False
    for index, strategy in enumerate(dict.fromkeys(r.strategy or "?" for r in runs)):
        groups: dict[tuple[Any, ...], list[Run]] = {}
        for run in runs:
            if (run.strategy or "?") == strategy:
                groups.setdefault(tuple(run.setting(k) for k in keys), []).append(run)
        points = []
        for setting in sorted(groups, key=_sort_key):
            xs = [100 * v for r in groups[setting] if (v := r.in_domain_change()) is not None]
            ys = [100 * v for r in groups[setting] if (v := r.general_change()) is not None]
            repeated = repeated or len(groups[setting]) > 1
            if xs and ys:
                points.append((setting, statistics.fmean(xs), statistics.fmean(ys), _stderr(xs), _stderr(ys)))
        if not points:
            continue
        scored = True
        colour = COLOURS.get(strategy, f"C{index}")
        ax.errorbar([p[1] for p in points], [p[2] for p in points], xerr=[p[3] for p in points],
                    yerr=[p[4] for p in points], marker="o", color=colour, capsize=3, label=strategy)
        for setting, x, y, _, _ in points:
            label = ", ".join(f"{k.split('.')[-1]}={_text(v)}" for k, v in zip(keys, setting, strict=True))
            ax.annotate(label, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7, color=colour)
    ax.set_xlabel("in-domain change from base (points)")
    ax.set_ylabel("held-out / general change from base (points)")
    ax.set_title("Trade-off: in-domain gain against forgetting" + (" (mean ± s.e. over seeds)" if repeated else ""))
    ax.legend(fontsize=8)
    if not scored:
        ax.text(0.5, 0.5, "no evaluation results yet", transform=ax.transAxes, ha="center", va="center")
    return _save(fig, path)


def _text(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _stderr(values: Sequence[float]) -> float:
    return statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else 0.0


def _sort_key(setting: tuple[Any, ...]) -> tuple[Any, ...]:
    """Numbers by value (1e-05 before 3e-05), anything else by its text."""
    return tuple((0, float(v), "") if _is_number(v) else (1, 0.0, str(v)) for v in setting)


def _is_number(value: Any) -> bool:
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return not isinstance(value, bool)


def _save(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path
