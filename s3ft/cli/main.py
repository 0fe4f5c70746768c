"""The `s3ft` command. Every user mistake surfaces as an `S3FTError`, printed here without a traceback."""

from __future__ import annotations

import argparse
import sys
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING

from s3ft.config.judges import JUDGE_OPTIONS
from s3ft.errors import S3FTError
from s3ft.runtime import console

if TYPE_CHECKING:
    from s3ft.config import RayConfig

SET_HELP = "Override a config key, e.g. --set data.limit=100 --set generation.backend=hf (repeatable)."


def _config_command(sub: argparse._SubParsersAction, name: str, help_text: str) -> argparse.ArgumentParser:
    parser = sub.add_parser(name, help=help_text, description=help_text)
    parser.add_argument("config", help="Experiment YAML (see configs/experiments/).")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help=SET_HELP)
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="s3ft",
        description="Selective Self-to-Supervised Fine-Tuning: train a model on its own correct answers, "
        "its own paraphrases of gold answers, and gold answers only where neither is judged correct.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="Everything on the console: debug logging, "
                        "and the engines', Ray's and the libraries' output (otherwise in RUN/logs/s3ft.log).")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    _config_command(
        sub, "data", "Build the training set: generate the model's answers, judge them, paraphrase the gold where they "
        "fail, judge again, select targets. Writes data/merged.jsonl and data/stats.json; re-runs skip finished shards."
    ).set_defaults(func=cmd_data)

    run = _config_command(
        sub, "run", "The whole job in one Ray driver: data (generate, judge, paraphrase, select) → train (DeepSpeed "
        "ZeRO-3 under Ray Train) → eval → report. Re-running resumes: finished shards, checkpoints and stages are "
        "kept; a changed setting re-runs what it affects."
    )
    run.add_argument("--from", dest="from_stage", choices=["data", "train", "eval", "report"],
                     help="Run this stage and every later one again, discarding their outputs.")
    run.set_defaults(func=cmd_run)

    sweep = _config_command(
        sub, "sweep", "Tune each strategy fairly: run a grid of ordinary runs (each resumable, all in this one Ray "
        "driver, sharing their data stages), choose each strategy's setting on a validation split carved from the "
        "training set (never the test set), and write OUTPUT_DIR/report/ with the protocol, the chosen settings' "
        "scores and a trade-off plot of every run."
    )
    sweep.add_argument("--grid", action="append", required=True, metavar="KEY=V1,V2,...",
                       help="A config key and its values, e.g. --grid train.lr=1e-5,3e-5,1e-4 "
                       "--grid selection.strategy=sft,ssr,s3ft (repeatable: the runs are the product).")
    sweep.add_argument("--seeds", type=int, nargs="+", default=[0], help="Seeds of every grid point (default 0).")
    sweep.add_argument("--validation-rows", type=int, help="Training rows held out to choose on "
                       "(default: data.validation_rows of the config).")
    sweep.set_defaults(func=cmd_sweep)

    _config_command(
        sub, "train", "Fine-tune model.path on RUN/data/merged.jsonl with DeepSpeed (train.launcher: ray | torchrun | "
        "local); resumes from the newest checkpoint; exports a 16-bit Hugging Face model to RUN/model."
    ).set_defaults(func=cmd_train)

    plan = _config_command(
        sub, "plan", "Will the config fit its cluster (the `cluster` section)? GPUs and memory per GPU that ZeRO-3 "
        "training needs with and without offload (DeepSpeed's estimator), and the vLLM engine layout. Reads only "
        "the model's config.json."
    )
    plan.add_argument("--model-config", help="A config.json to plan with instead of model.path's "
                      "(configs/models/ has the paper's models).")
    plan.set_defaults(func=cmd_plan)

    _config_command(
        sub, "eval", "Evaluate the base and the trained model (RUN/model): in-domain accuracy on eval.data_path with the "
        "task's judge, general benchmarks through lm-evaluation-harness, and the base model's likelihood of each "
        "source's targets. Writes eval/results.json and per-row outputs under eval/."
    ).set_defaults(func=cmd_eval)

    report = sub.add_parser(
        "report", help="Compare runs: a markdown table and a plot.",
        description="Compare runs (base, sft, ssr, s3ft, ...): in-domain metric, each general benchmark and the "
        "average change from base, the data-source split and the likelihood diagnostic of each run. Writes "
        "report.md and report.png: bars per run, or, when a strategy has several runs (settings, seeds), the "
        "trade-off of in-domain against held-out change with a line per strategy and error bars over seeds.",
    )
    report.add_argument("run_dirs", nargs="+", type=Path, metavar="RUN_DIR", help="Run directories to compare.")
    report.add_argument("--out", type=Path, help="Output folder (default: the run directory for one run, "
                        "else RUNS_PARENT/report).")
    report.set_defaults(func=cmd_report)

    judge = sub.add_parser(
        "judge", help="Judge a JSONL file of responses.",
        description="Judge a JSONL file: each input row carries `response` plus what the judge needs (math: gold; "
        "qa: answers or gold; code: HumanEval's prompt, test, entry_point or MBPP's test_list; llm: question and "
        "answers or gold; python: what its function reads). Each output row is the input plus `correct` and "
        "`reason`; the llm judge's summary adds its unparseable verdicts and, with an audit, the agreement.",
    )
    judge.add_argument("kind", help=f"Judge kind: {', '.join(sorted(JUDGE_OPTIONS))}.")
    judge.add_argument("--input", required=True, type=Path, help="JSONL rows to judge.")
    judge.add_argument("--output", required=True, type=Path, help="Where to write the judged rows (JSONL).")
    judge.add_argument("--set", dest="overrides", action="append", default=[], metavar="judge.KEY=VALUE",
                       help="Judge settings (judge.* keys only), e.g. --set judge.match=contains, "
                       "--set judge.options.timeout_s=5, --set judge.target=my_pkg.judges:check, "
                       "--set judge.llm.model.path=/models/judge.")
    judge.set_defaults(func=cmd_judge)

    tiny = sub.add_parser(
        "init-tiny-model", help="Write a tiny random Llama with a char-level tokenizer (no download).",
        description="Write a tiny random Llama (head_dim 64, so vLLM accepts it) with a char-level tokenizer and a "
        "chat template, in Hugging Face format: smoke-test a cluster without downloading weights.",
    )
    tiny.add_argument("dir", type=Path, help="Output folder.")
    tiny.add_argument("--hidden-size", type=int, default=128, help="A multiple of 64: heads are 64 wide (default 128).")
    tiny.add_argument("--layers", type=int, default=2)
    tiny.add_argument("--seed", type=int, default=0)
    tiny.set_defaults(func=cmd_init_tiny_model)

    wait = sub.add_parser(
        "wait-cluster", help="Wait until a Ray cluster can take a job.",
        description="Wait until a Ray cluster can take a job: NODES nodes alive and the head's job agent "
        "registered (until then Ray's job API refuses submissions). Exits 2 with what is missing on timeout. "
        "Launch scripts run it between starting the cluster and `ray job submit`.",
    )
    wait.add_argument("--address", required=True, help="The cluster's GCS address, HOST:PORT (as for `ray start`).")
    wait.add_argument("--nodes", type=int, default=1, help="Nodes that must have joined (default 1).")
    wait.add_argument("--timeout", type=float, default=300.0, help="Seconds before giving up (default 300).")
    wait.set_defaults(func=cmd_wait_cluster)
    return parser


def _ray(settings: RayConfig | None, needed: bool = True) -> AbstractContextManager[None]:
    """The command's Ray cluster (joined or started once, here) when it needs one."""
    from s3ft.runtime.cluster import ray_cluster

    return ray_cluster(settings) if needed else nullcontext()


def cmd_data(args: argparse.Namespace) -> None:
    from s3ft.cli.tables import print_stats
    from s3ft.config import load_config
    from s3ft.pipeline.data_engine import run_data

    config = load_config(args.config, args.overrides)
    console.log_to(config.output_dir)
    with _ray(config.ray, needed=config.selection.strategy != "sft"):
        summary = run_data(config)
    print_stats(summary, Path(config.output_dir))


def cmd_run(args: argparse.Namespace) -> None:
    from s3ft.config import load_config
    from s3ft.pipeline.run import run_all

    config = load_config(args.config, args.overrides)
    console.log_to(config.output_dir)
    with _ray(config.ray):
        artefacts = run_all(config, args.from_stage)
    print("s3ft run finished:")
    for name, path in artefacts.items():
        print(f"  {name:<14} {path}")


def cmd_sweep(args: argparse.Namespace) -> None:
    from s3ft.config import load_config
    from s3ft.pipeline.sweep import parse_grid, run_sweep

    grid = parse_grid(args.grid)
    config = load_config(args.config, args.overrides)
    console.log_to(config.output_dir)
    with _ray(config.ray):
        markdown, plot = run_sweep(args.config, args.overrides, grid, args.seeds, args.validation_rows)
    print(f"s3ft sweep finished: {markdown} (plot: {plot})")


def cmd_train(args: argparse.Namespace) -> None:
    from s3ft.config import load_config
    from s3ft.models.resolve import resolve_model
    from s3ft.train.driver import train

    config = load_config(args.config, args.overrides)
    console.log_to(config.output_dir)
    with _ray(config.ray, needed=config.train.launcher == "ray"):
        print(f"model written to {train(Path(config.output_dir), resolve_model(config.model), config.train)}")


def cmd_plan(args: argparse.Namespace) -> None:
    from s3ft.cli.tables import print_plan
    from s3ft.config import load_config
    from s3ft.plan import plan

    config = load_config(args.config, args.overrides)
    print_plan(plan(config, args.model_config), config)


def cmd_eval(args: argparse.Namespace) -> None:
    from s3ft.cli.tables import print_results
    from s3ft.config import load_config
    from s3ft.eval.results import results_path
    from s3ft.eval.run import run_eval

    config = load_config(args.config, args.overrides)
    console.log_to(config.output_dir)
    with _ray(config.ray):
        results = run_eval(config)
    print_results(results, results_path(config.output_dir))


def cmd_report(args: argparse.Namespace) -> None:
    import os

    from s3ft.report import write_report

    out = args.out
    if out is None:
        parent = Path(os.path.commonpath([d.resolve() for d in args.run_dirs]))
        out = args.run_dirs[0] if len(args.run_dirs) == 1 else parent / "report"
    markdown, plot = write_report(args.run_dirs, out)
    print(f"report written: {markdown} and {plot}")


def cmd_judge(args: argparse.Namespace) -> None:
    from s3ft.config import JudgeConfig, apply_overrides, build_section, parse_override
    from s3ft.errors import ConfigError
    from s3ft.judges.files import judge_file

    for item in args.overrides:
        if (key := parse_override(item)[0])[0] != "judge":
            raise ConfigError(f"--set {'.'.join(key)}: `s3ft judge` takes judge.* keys only (e.g. judge.match=contains)")
    settings = apply_overrides({"judge": {"kind": args.kind}}, args.overrides)
    cfg = build_section(JudgeConfig, settings["judge"], "judge")
    with _ray(None, needed=cfg.kind == "llm" and cfg.llm is not None and cfg.llm.endpoint is None):
        stats = judge_file(cfg, args.input, args.output)
    total, correct = stats["rows"], stats["correct"]
    print(f"{total} rows judged: {correct} correct, {total - correct} incorrect "
          f"({stats['errors']} could not be judged) → {args.output}")
    if cfg.kind == "llm" and cfg.llm is not None:
        print(f"llm judge: {stats['unparseable']} unparseable verdict(s), counted as incorrect")
        if audit := stats.get("audit"):
            print(f"llm judge audit: agrees with the {cfg.llm.audit_with} judge on {100 * audit['agreement']:.1f}% "
                  f"of {audit['rows']} rows")


def cmd_init_tiny_model(args: argparse.Namespace) -> None:
    from s3ft.models.tiny import build_tiny_model

    path = build_tiny_model(args.dir, hidden_size=args.hidden_size, num_layers=args.layers, seed=args.seed)
    print(f"tiny Llama written to {path}")


def cmd_wait_cluster(args: argparse.Namespace) -> None:
    from s3ft.runtime.cluster import wait_for_cluster

    wait_for_cluster(args.address, args.nodes, args.timeout)
    print(f"Ray cluster at {args.address} is ready for jobs")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    console.setup(args.verbose)
    try:
        args.func(args)
    except S3FTError as exc:
        print(f"s3ft {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"s3ft {args.command}: interrupted; finished shards are kept, run again to resume", file=sys.stderr)
        return 130
    finally:
        console.close()
    return 0

