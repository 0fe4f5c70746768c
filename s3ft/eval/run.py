"""`s3ft eval`: in-domain accuracy, general benchmarks and the likelihood diagnostic, into results.json.

Each part writes its own section as soon as it is done, so a failure later keeps what was measured.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from s3ft.config import Config, stage_key
from s3ft.eval.base_cache import cache_dir, cached
from s3ft.eval.in_domain import eval_name, evaluate_in_domain, model_fingerprint
from s3ft.eval.results import Results, results_path, update_results
from s3ft.models.resolve import resolve_model
from s3ft.runtime import console
from s3ft.runtime.shards import file_digest

if TYPE_CHECKING:
    from s3ft.generation.keeper import EngineKeeper

log = logging.getLogger(__name__)


def run_eval(cfg: Config, keeper: EngineKeeper | None = None) -> Results:
    """`keeper`: an EngineKeeper whose engines evaluate in turn the checkpoints of many runs (a sweep)."""
    run_dir = Path(cfg.output_dir)
    path = results_path(run_dir)
    base = resolve_model(cfg.model)
    trained = run_dir / "model"
    models = {"base": base, "trained": str(trained)}
    labels = [label for label in cfg.eval.models if label == "base" or (trained / "config.json").is_file()]
    if "trained" in cfg.eval.models and "trained" not in labels:
        log.warning("no trained model at %s yet: evaluating the base model only", trained)
    update_results(path, run=run_dir.name, strategy=cfg.selection.strategy, seed=cfg.seed, base_model=base,
                   trained_model=str(trained) if "trained" in labels else None)

    cache = cache_dir(cfg)
    if cfg.eval.data_path or (run_dir / "data" / "validation.jsonl").is_file():
        name = eval_name(cfg)
        with contextlib.ExitStack() as stack:
            if keeper is None:  # the base and then the trained model through one engine pool, held as a fresh one
                from s3ft.generation.keeper import EngineKeeper

                keeper = stack.enter_context(EngineKeeper(reserve=True))
            for label in labels:
                scored = evaluate_in_domain(cfg, label, models[label], cache if label == "base" else None, keeper)
                for split, score in scored.items():
                    log.info("%s accuracy of the %s model: %.4f on %d rows", split, label, score["accuracy"],
                             score["n"])
                    section = {"task": cfg.data.task, "name": name if split == "test" else f"{name} (validation)",
                               "metric": "accuracy", "n": score["n"], label: score["accuracy"]}
                    update_results(path, **{"in_domain" if split == "test" else "validation": section})

    if cfg.eval.general_tasks:
        for label in labels:
            with console.libraries_to_log():  # lm-eval's and transformers' own progress bars
                scores = _general(cfg, models[label], cache if label == "base" else None)
            log.info("general benchmarks of the %s model: %s", label, scores)
            update_results(path, general={label: scores})

    merged = run_dir / "data" / "merged.jsonl"
    if cfg.eval.likelihood and merged.is_file():
        from s3ft.eval.likelihood import target_nll

        key = stage_key("likelihood", model_fingerprint(base), file_digest(merged), str(cfg.eval.likelihood_rows))
        with console.libraries_to_log():
            measured = cached(cache, key, lambda: target_nll(
                base, merged, max_rows_per_source=cfg.eval.likelihood_rows, device=_device()), [])
        update_results(path, likelihood={"base_model": base, **measured})
    return update_results(path)


def _general(cfg: Config, model_path: str, cache: Path | None) -> dict[str, float]:
    from s3ft.eval.general import evaluate_general

    ev = cfg.eval
    key = stage_key("general", model_fingerprint(model_path), ev.general_tasks, ev.general_backend, ev.general_limit,
                    ev.include_path or "", str(ev.num_fewshot), str(cfg.seed))
    return cached(cache, key, lambda: evaluate_general(
        model_path, ev.general_tasks, backend=ev.general_backend, limit=ev.general_limit,
        batch_size=ev.general_batch_size, include_path=ev.include_path, seed=cfg.seed, num_fewshot=ev.num_fewshot,
        device=_device(),
    ), [])


def _device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
