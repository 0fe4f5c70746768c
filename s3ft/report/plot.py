"""The report's figure: per run, the in-domain gain next to the general-ability change (the paper's
trade-off at a glance: SFT gains in-domain and loses general ability; S3FT should lose less)."""

from __future__ import annotations

import math
from pathlib import Path

from s3ft.report.runs import Run

BARS = (("in-domain", Run.in_domain_change, "#1f77b4"), ("general (avg)", Run.general_change, "#d62728"))


def plot_changes(runs: list[Run], path: Path) -> Path:
    """Grouped bars of Δ in-domain and Δ general average (points) per run; a note where nothing is scored."""
    from matplotlib.figure import Figure  # a bare Figure renders with Agg: no GUI backend, no global state

    fig = Figure(figsize=(max(5.0, 1.4 * len(runs) + 2.5), 4.0), dpi=110, layout="constrained")
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
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path
