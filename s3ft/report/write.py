"""`s3ft report`: compare runs (e.g. sft, ssr, s3ft, rft on one task) in one markdown file and one figure."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from s3ft.errors import ReportError
from s3ft.report.markdown import render
from s3ft.report.plot import plot_report
from s3ft.report.runs import Run, load_run

REPORT_MD = "report.md"
REPORT_PNG = "report.png"


def write_report(
    run_dirs: list[Path], out_dir: Path, head: Callable[[list[Run]], str] | None = None
) -> tuple[Path, Path]:
    """Write `out_dir/report.md` and `out_dir/report.png` for the runs, in the order given; `head(runs)`
    adds sections above the scores (a sweep's protocol)."""
    if not run_dirs:
        raise ReportError("no run directories given")
    runs = _unique_labels([load_run(Path(d)) for d in run_dirs])
    out_dir.mkdir(parents=True, exist_ok=True)
    png = plot_report(runs, out_dir / REPORT_PNG)
    md = out_dir / REPORT_MD
    md.write_text(render(runs, png.name, head(runs) if head else None))
    return md, png


def _unique_labels(runs: list[Run]) -> list[Run]:
    """Two runs with one name (same folder name under different parents) get `#2`, `#3`."""
    seen: dict[str, int] = {}
    for run in runs:
        seen[run.label] = seen.get(run.label, 0) + 1
        if seen[run.label] > 1:
            run.label = f"{run.label}#{seen[run.label]}"
    return runs
