"""Console tables a person reads at the end of a command."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from s3ft.config import ClusterConfig, Config
from s3ft.eval.results import Results
from s3ft.plan import Plan
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
    if summary.get("paraphrase_leaked"):
        console.print(f"paraphrase: {summary['paraphrase_leaked']} judged correct but refused for leaking their prompt "
                      "(trained on gold)")
    judge = summary["judge"]
    if judge["errors"] or judge["unparseable"]:
        console.print(f"[yellow]judge: {judge['errors']} rows could not be judged, {judge['unparseable']} verdicts were "
                      f"unparseable (both count as incorrect) of {judge['verdicts']}[/yellow]")
    if "audit" in judge:
        console.print(f"judge audit: agrees with the rule judge on {100 * judge['audit']['agreement']:.1f}% of "
                      f"{judge['audit']['rows']} rows")
    console.print(
        f"{summary['input_rows']} input rows: {summary['examples']} examples, "
        + (f"{held} held out for validation, " if (held := summary.get("validation_rows", 0)) else "")
        + f"{summary['rejected']} rejected"
        f"{' (see data/rejects.jsonl)' if summary['rejected'] else ''}. Written: {run_dir / 'data' / 'merged.jsonl'}, "
        f"{run_dir / 'data' / 'stats.json'}"
    )


def print_results(results: Results, path: Path) -> None:
    table = Table(title=f"evaluation of {results.run} ({results.strategy})")
    table.add_column("measure")
    table.add_column("base", justify="right")
    table.add_column("trained", justify="right")
    if results.in_domain:
        d = results.in_domain
        table.add_row(f"{d.name or d.task} {d.metric} (n={d.n})", _pct(d.base), _pct(d.trained))
    if results.validation:
        v = results.validation
        table.add_row(f"{v.name or v.task} {v.metric} (n={v.n})", _pct(v.base), _pct(v.trained))
    if results.general:
        for task in sorted(set(results.general.base) | set(results.general.trained)):
            table.add_row(task, _pct(results.general.base.get(task)), _pct(results.general.trained.get(task)))
    console = Console()
    console.print(table)
    if results.likelihood:
        nll = ", ".join(f"{s} {v:.3f}" for s, v in results.likelihood.nll.items())
        console.print(f"base-model NLL per target token by source: {nll}")
    console.print(f"Written: {path}")


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f}"


def print_plan(plan: Plan, config: Config) -> None:
    cluster = config.cluster or ClusterConfig()
    console = Console()
    m = plan.model
    console.print(f"model: {m.params / 1e9:.2f}B parameters, largest layer {m.largest_layer_params / 1e6:.0f}M, "
                  f"{m.layers} layers; cluster: {cluster.nodes} node(s) x {cluster.gpus_per_node} GPU(s) of "
                  f"{cluster.gpu_memory_gib:g} GiB, {cluster.cpu_memory_gib:g} GiB host memory per node"
                  + ("" if config.cluster else " (the default: the config has no cluster section)"))
    t = plan.train
    table = Table(title=f"training: {t['ranks']} rank(s) on {t['nodes']} node(s), {'LoRA' if t['lora'] else 'full'}, "
                        f"activations ~{t['activations_gib']} GiB per GPU")
    for column in ("ZeRO-3 mode", "GiB per GPU", "GiB per node (CPU)", "fits"):
        table.add_column(column)
    for name, mode in t["modes"].items():
        chosen = " (configured)" if name == t["deepspeed"] else ""
        table.add_row(name + chosen, str(mode["gpu_gib"]), str(mode["cpu_gib_per_node"]), "yes" if mode["fits"] else "NO")
    console.print(table)
    g = plan.generation
    if g.get("engines"):
        console.print(f"generation: {g['engines']} vLLM engine(s) x TP {g['tensor_parallel_size']} = {g['gpus']} GPU(s); "
                      f"weights {g['weights_gib_per_gpu']} GiB per GPU; KV cache ~{g['kv_cache_tokens_per_engine']:,} "
                      "tokens per engine")
    else:
        console.print(f"generation: {g.get('note', 'none')}")
    for warning in plan.warnings:
        console.print(f"[bold yellow]warning:[/bold yellow] {warning}")
    console.print("the layout fits the cluster" if plan.fits else "[bold red]the layout does not fit the cluster[/bold red]")
