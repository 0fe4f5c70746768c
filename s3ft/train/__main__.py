"""`python -m s3ft.train`: train from a YAML, directly or as one rank under torchrun / deepspeed.

    python -m s3ft.train exp.yaml [--run-dir DIR] [--model PATH] [--set train.lr=1e-4]
    torchrun --nproc-per-node 8 -m s3ft.train exp.yaml
    deepspeed --num_gpus 8 --module s3ft.train exp.yaml

`--config exp.yaml` is the same as the positional CONFIG.

The YAML is an experiment config (its `train` section, `output_dir` and `model.path` are used) or
just a train section. Under torchrun/deepspeed every rank validates and tokenizes the rows itself
(deterministically) and rank 0 writes them.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from s3ft.config import apply_overrides
from s3ft.config.train import TrainConfig
from s3ft.errors import ConfigError, S3FTError


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m s3ft.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", nargs="?", help="experiment YAML (with a `train:` section) or a train-section YAML")
    parser.add_argument("--config", dest="config_option", metavar="CONFIG", help="the same as the positional CONFIG")
    parser.add_argument("--run-dir", help="run directory (default: the config's output_dir)")
    parser.add_argument("--model", help="base model folder (default: the config's model.path)")
    parser.add_argument("--data", help="merged rows JSONL (default: RUN_DIR/data/merged.jsonl)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="train.KEY=VALUE",
                        help="override a train key (the `train.` prefix is optional); repeatable")
    parser.add_argument("--worker-spec", help=argparse.SUPPRESS)  # internal: ranks started by launch_torchrun
    parser.add_argument("--local_rank", "--local-rank", type=int, help=argparse.SUPPRESS)  # deepspeed launcher
    args = parser.parse_args(argv)
    if args.config and args.config_option and args.config != args.config_option:
        parser.error(f"two configs given: {args.config} and --config {args.config_option}")
    args.config = args.config or args.config_option
    return args


def load_train_settings(args: argparse.Namespace) -> tuple[Path, str, TrainConfig]:
    data: dict[str, Any] = {}
    if args.config:
        path = Path(args.config)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        data = yaml.safe_load(path.read_text()) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: the top level must be a mapping")
    experiment = "train" in data or "output_dir" in data or "model" in data
    section = dict(data.get("train") or {}) if experiment else data
    overrides = [o.removeprefix("train.") for o in args.overrides]
    section = apply_overrides(section, overrides)
    try:
        cfg = TrainConfig.model_validate(section)
    except ValidationError as exc:
        problems = "\n".join(f"  train.{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"the train section is invalid:\n{problems}") from None
    run_dir = args.run_dir or (data.get("output_dir") if experiment else None)
    model = args.model or ((data.get("model") or {}).get("path") if experiment else None)
    if not run_dir or not model:
        raise ConfigError("give --run-dir and --model, or a config with output_dir and model.path")
    return Path(run_dir), str(model), cfg


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.worker_spec:
            from s3ft.train.loop import run_worker
            from s3ft.train.spec import WorkerSpec

            run_worker(WorkerSpec(**json.loads(Path(args.worker_spec).read_text())))
            return 0
        from s3ft.runtime.cluster import ray_cluster
        from s3ft.train.driver import train
        from s3ft.train.launch import in_launched_rank

        run_dir, model, cfg = load_train_settings(args)
        with ray_cluster() if cfg.launcher == "ray" and not in_launched_rank() else contextlib.nullcontext():
            out = train(run_dir, model, cfg, data_path=Path(args.data) if args.data else None)
        if os.environ.get("RANK", "0") == "0":
            print(f"model written to {out}")
        return 0
    except S3FTError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
