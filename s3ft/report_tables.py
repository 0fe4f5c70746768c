"""Console tables a person reads at the end of a command."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from s3ft.selection import SOURCES


def print_stats(summary: dict[str, Any], run_dir: Path) -> None:
    table = Table(title=f"training targets by source ({summary['strategy']})")
    table.add_column("source")
    table.add_column("rows", justify="right")
    table.add_column("share", justify="right")
    for source in SOURCES:
        table.add_row(source, str(summary[source]), f"{100 * summary['share'][source]:.1f}%")
    table.add_row("total", str(summary["total"]), "100.0%", style="bold")
    console = Console()
    console.print(table)
    console.print(
        f"{summary['input_rows']} input rows: {summary['examples']} examples, {summary['rejected']} rejected"
        f"{' (see data/rejects.jsonl)' if summary['rejected'] else ''}. Written: {run_dir / 'data' / 'merged.jsonl'}, "
        f"{run_dir / 'data' / 'stats.json'}"
    )
