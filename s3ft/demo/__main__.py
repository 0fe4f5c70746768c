"""`python -m s3ft.demo` (what `make demo` runs): base vs SFT vs S3FT on CPU, then one report.

Pretrains the base model if it is missing, runs `s3ft run configs/experiments/demo.yaml` with S3FT
and with plain SFT (each evaluates the base model too), then `s3ft report` over the runs, and adds
the notes a reader needs to judge the numbers (seeds, test sizes, noise). `--seeds 0 1 2` repeats
both fine-tunings per seed (data order) and reports the spread.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from s3ft.demo.pretrain import PretrainSettings, build_demo_model
from s3ft.demo.report import DemoRun, demo_notes

DEMO_CONFIG = Path("configs/experiments/demo.yaml")
STRATEGIES = ("s3ft", "sft")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m s3ft.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=DEMO_CONFIG, help="The demo's experiment YAML.")
    parser.add_argument("--runs", type=Path, default=Path("runs"),
                        help="Where the run directories (demo_s3ft/, demo_sft/, ...) and demo_report/ go.")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0],
                        help="Fine-tuning seeds (data order); each adds an S3FT and an SFT run of ~2 minutes.")
    parser.add_argument("--pretrain-steps", type=int, default=PretrainSettings.steps,
                        help="Pretraining steps of the base model, if it has to be built (fewer: a quick check).")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="Config override for every run, as in `s3ft run` (repeatable).")
    return parser


def run_dir(runs: Path, strategy: str, seed: int) -> Path:
    return runs / (f"demo_{strategy}" if seed == 0 else f"demo_{strategy}_seed{seed}")


def main(argv: list[str] | None = None) -> int:
    from s3ft.cli import main as s3ft
    from s3ft.config import load_config

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    started = time.time()
    base = Path(load_config(args.config, args.overrides).model.path)
    if not (base / "config.json").is_file():
        print(f"demo: pretraining the base model at {base} ({args.pretrain_steps} steps, once)", flush=True)
        build_demo_model(base, PretrainSettings(steps=args.pretrain_steps))
    runs = [DemoRun(strategy, seed, run_dir(args.runs, strategy, seed)) for seed in args.seeds for strategy in STRATEGIES]
    for run in runs:
        print(f"demo: s3ft run ({run.strategy}, seed {run.seed}) → {run.path}", flush=True)
        sets = [*args.overrides, f"selection.strategy={run.strategy}", f"output_dir={run.path}",
                f"seed={run.seed}", f"train.seed={run.seed}"]
        if code := s3ft(["run", str(args.config), *(a for s in sets for a in ("--set", s))]):
            return code
    out = args.runs / "demo_report"
    if code := s3ft(["report", *(str(run.path) for run in runs), "--out", str(out)]):
        return code
    report = out / "report.md"
    notes = demo_notes(base, runs, minutes=(time.time() - started) / 60)
    report.write_text(report.read_text() + "\n" + notes)
    print(notes)
    print(f"demo: the report is {report} (plot: {out / 'report.png'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
