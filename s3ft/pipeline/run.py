"""`s3ft run`: data → train → eval → report in one Ray driver, each stage resumable.

The data stages resume shard by shard and training from its last checkpoint; a stage that finished
leaves a marker keyed by the settings and inputs it depended on, so a re-run skips it, and a changed
setting (or `--from STAGE`) runs it and everything after it again.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from s3ft.config import Config, save_config, stage_key
from s3ft.runtime.preflight import check_output_dir
from s3ft.runtime.shards import file_digest

if TYPE_CHECKING:
    from s3ft.generation.keeper import EngineKeeper

log = logging.getLogger(__name__)
STAGES = ("data", "train", "eval", "report")
RELEASE_TIMEOUT_S = 120.0


def forget(run_dir: Path, first: str) -> None:
    """`--from STAGE`: drop that stage's outputs and markers, and those of every later stage."""
    from s3ft.train.driver import clean

    stages = STAGES[STAGES.index(first):]
    if "data" in stages:
        shutil.rmtree(run_dir / "stages", ignore_errors=True)
        shutil.rmtree(run_dir / "data", ignore_errors=True)
    if "train" in stages:
        clean(run_dir)
    if "eval" in stages:
        shutil.rmtree(run_dir / "eval", ignore_errors=True)
        for path in (run_dir / "stages").glob("eval_*"):
            shutil.rmtree(path, ignore_errors=True)
    markers = _markers(run_dir)
    (run_dir / "stages").mkdir(parents=True, exist_ok=True)
    _save_markers(run_dir, {k: v for k, v in markers.items() if k not in stages})


def run_all(cfg: Config, from_stage: str | None = None, keeper: EngineKeeper | None = None) -> dict[str, Path]:
    """`keeper`: an EngineKeeper (generation/keeper.py) to evaluate with, when many runs share one."""
    from s3ft.eval.run import run_eval
    from s3ft.models.resolve import resolve_model
    from s3ft.pipeline.data_engine import run_data
    from s3ft.report import write_report
    from s3ft.runtime.cluster import require_ray
    from s3ft.train.driver import train

    run_dir = Path(cfg.output_dir)
    check_output_dir(run_dir)
    if from_stage:
        forget(run_dir, from_stage)
    save_config(cfg, run_dir / "config.yaml")
    require_ray()

    log.info("stage 1/4: data (%s)", cfg.selection.strategy)
    run_data(cfg)
    wait_for_release()

    model_path = resolve_model(cfg.model)
    train_key = stage_key(cfg.train, model_path, file_digest(run_dir / "data" / "merged.jsonl"))
    if _done(run_dir, "train", train_key):
        log.info("stage 2/4: train — done already (%s)", run_dir / "model")
    else:
        log.info("stage 2/4: train (%s, %d worker(s))", cfg.train.launcher, cfg.train.num_workers)
        train(run_dir, model_path, cfg.train)
        _mark(run_dir, "train", train_key)

    eval_key = stage_key(cfg.eval, cfg.judge.cache_key(), train_key)
    if _done(run_dir, "eval", eval_key):
        log.info("stage 3/4: eval — done already")
    else:
        log.info("stage 3/4: eval")
        run_eval(cfg, keeper)
        _mark(run_dir, "eval", eval_key)

    log.info("stage 4/4: report")
    markdown, plot = write_report([run_dir], run_dir)
    return {
        "merged data": run_dir / "data" / "merged.jsonl",
        "source stats": run_dir / "data" / "stats.json",
        "model": run_dir / "model",
        "eval results": run_dir / "eval" / "results.json",
        "report": markdown,
        "plot": plot,
    }


def wait_for_release(timeout_s: float = RELEASE_TIMEOUT_S) -> dict[str, float]:
    """Block until the engines' CPUs and GPUs are back in the cluster, so training can have them."""
    import ray

    deadline = time.time() + timeout_s
    while True:
        total, free = ray.cluster_resources(), ray.available_resources()
        held = {r: total.get(r, 0) - free.get(r, 0) for r in ("CPU", "GPU") if total.get(r, 0) - free.get(r, 0) > 1e-6}
        if not held:
            log.info("generation resources released: %s", {r: total.get(r, 0) for r in ("CPU", "GPU")})
            return held
        if time.time() > deadline:
            log.warning("after %.0f s, %s are still held in the cluster (other jobs?); training may wait for them",
                        timeout_s, held)
            return held
        time.sleep(0.5)


def _markers(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "stages" / "done.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def _save_markers(run_dir: Path, markers: dict[str, Any]) -> None:
    (run_dir / "stages").mkdir(parents=True, exist_ok=True)  # with a shared stages_dir, only the markers live here
    (run_dir / "stages" / "done.json").write_text(json.dumps(markers, indent=2) + "\n")


def _done(run_dir: Path, stage: str, key: str) -> bool:
    return _markers(run_dir).get(stage) == key


def _mark(run_dir: Path, stage: str, key: str) -> None:
    _save_markers(run_dir, _markers(run_dir) | {stage: key})
