"""`python -m s3ft.demo` (what `make demo` runs): base vs SFT vs SSR vs S3FT on CPU, each tuned fairly.

Pretrains the base model if it is missing, then runs `s3ft sweep configs/experiments/demo.yaml` over
a small learning-rate grid for the three strategies (one seed): every run shares the data stages,
the base model is evaluated once, and each strategy is compared at the learning rate its validation
split (carved from the training set) chose. `--full` runs the whole grid with three seeds, for the
trade-off plot with error bars, in the same sweep directory (the demo's six runs are reused). The
demo's notes (standard errors, chosen rates, base model, time)
go under the sweep's report.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from s3ft.demo.pretrain import PretrainSettings, build_demo_model
from s3ft.demo.report import demo_notes

DEMO_CONFIG = Path("configs/experiments/demo.yaml")
STRATEGIES = ("sft", "ssr", "s3ft")
# At 1e-4 (10 epochs) SFT has not learnt the gold style yet (train loss ~1.5 per token, 0% on the test):
# the small grid brackets S3FT's rate of old (3e-4) and gives SFT a higher one.
LRS = ("3e-4", "1e-3")
FULL_LRS = ("1e-4", "3e-4", "1e-3", "3e-3")
FULL_SEEDS = (0, 1, 2)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m s3ft.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=DEMO_CONFIG, help="The demo's experiment YAML.")
    parser.add_argument("--runs", type=Path, default=Path("runs"),
                        help="Where the sweep goes: RUNS/demo. --full extends the same sweep: the runs the demo "
                        "made are not run again.")
    parser.add_argument("--full", action="store_true",
                        help=f"The whole grid (lr {', '.join(FULL_LRS)}) with seeds 0 1 2: the trade-off plot with "
                        "error bars (~30 minutes on 2 cores, the demo's six runs reused).")
    parser.add_argument("--lrs", nargs="+", help=f"Learning rates to choose from (default {' '.join(LRS)}).")
    parser.add_argument("--seeds", type=int, nargs="+", help="Fine-tuning seeds (default 0; --full: 0 1 2).")
    parser.add_argument("--pretrain-steps", type=int, default=PretrainSettings.steps,
                        help="Pretraining steps of the base model, if it has to be built (fewer: a quick check).")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="Config override for every run, as in `s3ft sweep` (repeatable).")
    return parser


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
    lrs = args.lrs or (FULL_LRS if args.full else LRS)
    seeds = args.seeds or (list(FULL_SEEDS) if args.full else [0])
    root = args.runs / "demo"  # a grid point run before (the demo's, for --full) is done: the sweep skips it
    sets = [*args.overrides, f"output_dir={root}"]
    print(f"demo: s3ft sweep: lr {', '.join(lrs)} × {', '.join(STRATEGIES)}, seeds {' '.join(map(str, seeds))} "
          f"→ {root}", flush=True)
    code = s3ft(["sweep", str(args.config), "--grid", f"train.lr={','.join(lrs)}",
                 "--grid", f"selection.strategy={','.join(STRATEGIES)}", "--seeds", *map(str, seeds),
                 *(a for s in sets for a in ("--set", s))])
    if code:
        return code
    report = root / "report" / "report.md"
    notes = demo_notes(base, root, minutes=(time.time() - started) / 60)
    report.write_text(report.read_text() + "\n" + notes)
    print(notes)
    print(f"demo: the report is {report} (plot: {root / 'report' / 'report.png'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
