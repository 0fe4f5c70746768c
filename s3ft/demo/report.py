"""The demo's notes under the sweep's report: base, SFT, SSR and S3FT each at its validation-chosen
learning rate, every score with its standard error (binomial over the test rows with one seed, over
seeds with several), so a reader can tell a real difference from luck."""

from __future__ import annotations

import json
from pathlib import Path

from s3ft.demo.pretrain import SUMMARY
from s3ft.report.runs import Run, load_run
from s3ft.report.sweep import choose, with_error

HELD_OUT = "demo_reverse"
HELD_OUT_FILE = Path(__file__).parent / "lm_eval_tasks" / HELD_OUT / f"{HELD_OUT}.jsonl"


def _held_out(run: Run, model: str) -> float | None:
    general = run.results.general
    return getattr(general, model).get(HELD_OUT) if general else None


def demo_notes(base: Path, root: Path, minutes: float) -> str:
    """Markdown for the sweep at `root` (its sweep.json and runs/)."""
    spec = json.loads((root / "sweep.json").read_text())
    runs = [load_run(root / "runs" / name) for name in spec["runs"] if (root / "runs" / name).is_dir()]
    if not runs:
        return "## Demo notes\n\nNo finished runs.\n"
    tuned = [k for k in spec["grid"] if k != "selection.strategy"]
    n_out = _rows(HELD_OUT_FILE)
    first = runs[0].results
    n_in = first.in_domain.n if first.in_domain else None
    n_val = first.validation.n if first.validation else None
    header = (f"| model | learning rate | validation: addition (n={n_val}) | in-domain: addition (n={n_in}) | "
              f"held-out: word reversal (n={n_out}) | targets (self / paraphrase / gold) |")
    table = [header, "| --- | --- | --- | --- | --- | --- |"]
    table.append(f"| base | — | {with_error([first.validation.base if first.validation else None], n_val)} | "
                 f"{with_error([first.in_domain.base if first.in_domain else None], n_in)} | "
                 f"{with_error([_held_out(runs[0], 'base')], n_out)} | |")
    chosen_rates = []
    for choice in choose(runs, tuned):
        chosen = choice.runs
        rate = ", ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in choice.setting)
        chosen_rates.append(f"{choice.strategy} {rate}")
        stats = chosen[0].stats or {}
        table.append(
            f"| {choice.strategy} | {rate} | "
            f"{with_error([r.results.validation.trained if r.results.validation else None for r in chosen], n_val)} | "
            f"{with_error([r.results.in_domain.trained if r.results.in_domain else None for r in chosen], n_in)} | "
            f"{with_error([_held_out(r, 'trained') for r in chosen], n_out)} | "
            f"{stats.get('self', '—')} / {stats.get('paraphrase', '—')} / {stats.get('gold', '—')} |"
        )
    seeds = spec["seeds"]
    lines = [
        "## Demo notes",
        "\n".join(table),
        f"Each strategy at the learning rate (of {', '.join(spec['grid'].get('train.lr', []))}) with the best "
        f"validation accuracy: {'; '.join(chosen_rates)}. Accuracy in percent ± one standard error: "
        + ("over the seeds " + ", ".join(map(str, seeds)) if len(seeds) > 1 else
           f"the binomial error of the sample (one seed, {seeds[0]})")
        + ". Differences under about two standard errors are within the noise.",
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


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.1f}%"


def _rows(path: Path) -> int:
    return sum(1 for line in path.read_text().splitlines() if line.strip()) if path.is_file() else 0
