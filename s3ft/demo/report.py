"""The demo's notes under the comparison report: base/SFT/S3FT side by side with their sampling
noise (and, over several seeds, their spread), so a reader can tell a real difference from luck."""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass
from pathlib import Path

from s3ft.demo.pretrain import SUMMARY
from s3ft.eval.results import Results, read_results, results_path

HELD_OUT = "demo_reverse"


@dataclass(frozen=True)
class DemoRun:
    strategy: str
    seed: int
    path: Path


def standard_error(p: float, n: int) -> float:
    """Binomial standard error of an accuracy `p` measured on `n` rows."""
    return math.sqrt(p * (1 - p) / n) if n else 0.0


def scores(res: Results, model: str) -> tuple[float | None, float | None]:
    """(in-domain, held-out) accuracy of the base or trained model of one run."""
    in_domain = getattr(res.in_domain, model) if res.in_domain else None
    held_out = getattr(res.general, model).get(HELD_OUT) if res.general else None
    return in_domain, held_out


def demo_notes(base: Path, runs: list[DemoRun], minutes: float) -> str:
    results = [(run, read_results(results_path(run.path))) for run in runs]
    first = results[0][1]
    n_in = first.in_domain.n if first.in_domain and first.in_domain.n else 0
    n_out = _rows(Path(__file__).parent / "lm_eval_tasks" / HELD_OUT / f"{HELD_OUT}.jsonl")

    def cell(score: float | None, n: int) -> str:
        return "—" if score is None else f"{100 * score:.1f} ± {100 * standard_error(score, n):.1f}"

    table = [f"| model | in-domain: addition (n={n_in}) | held-out: word reversal (n={n_out}) |", "| --- | --- | --- |"]
    in_base, out_base = scores(first, "base")
    table.append(f"| base | {cell(in_base, n_in)} | {cell(out_base, n_out)} |")
    for run, res in results:
        in_trained, out_trained = scores(res, "trained")
        table.append(f"| {run.strategy} (seed {run.seed}) | {cell(in_trained, n_in)} | {cell(out_trained, n_out)} |")
    seeds = sorted({run.seed for run in runs})
    if len(seeds) > 1:
        for strategy in dict.fromkeys(run.strategy for run in runs):
            per_seed = [scores(res, "trained") for run, res in results if run.strategy == strategy]
            table.append(f"| {strategy}, mean ± sd over {len(per_seed)} seeds | "
                         f"{_spread([a for a, _ in per_seed])} | {_spread([b for _, b in per_seed])} |")
    lines = [
        "## Demo notes",
        "\n".join(table),
        "Accuracy in percent ± one binomial standard error of the test sample"
        + (", and the mean ± standard deviation over the seeds" if len(seeds) > 1 else "")
        + f". Seeds {', '.join(map(str, seeds))} (the fine-tuning's data order; the base model is the same for "
        "all). Differences under about two standard errors are within the noise of the test sample alone.",
    ]
    pretrain = base / SUMMARY
    if pretrain.is_file():
        pretrained = json.loads(pretrain.read_text())
        settings = pretrained.get("settings", {})
        lines.append(
            f"Base model: {base}, pretrained {settings.get('steps')} steps (seed {settings.get('seed')}) in "
            f"{pretrained.get('seconds')} s on additions asked one way, restate requests and word reversal. Its greedy "
            f"accuracy then: fine-tuning set {_pct(pretrained.get('finetune_self'))}, restating the fine-tuning "
            f"set's gold answers {_pct(pretrained.get('finetune_restate'))}, addition test "
            f"{_pct(pretrained.get('test_addition'))}, word reversal {_pct(pretrained.get('test_reverse'))}."
        )
    lines.append(f"The whole demo took {minutes:.1f} minutes.")
    return "\n\n".join(lines) + "\n"


def _spread(values: list[float | None]) -> str:
    known = [v for v in values if v is not None]
    if len(known) < 2:
        return "—"
    return f"{100 * statistics.mean(known):.1f} ± {100 * statistics.stdev(known):.1f}"


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.1f}%"


def _rows(path: Path) -> int:
    return sum(1 for line in path.read_text().splitlines() if line.strip()) if path.is_file() else 0
