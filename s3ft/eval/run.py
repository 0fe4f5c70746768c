"""`s3ft eval`: in-domain accuracy, general benchmarks and the likelihood diagnostic, into results.json.

Each part writes its own section as soon as it is done, so a failure later keeps what was measured.
"""

from __future__ import annotations

import logging
from pathlib import Path

from s3ft.config import Config
from s3ft.eval.in_domain import evaluate_in_domain
from s3ft.eval.results import Results, results_path, update_results
from s3ft.models.resolve import resolve_model

log = logging.getLogger(__name__)


def run_eval(cfg: Config) -> Results:
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

    if cfg.eval.data_path:
        for label in labels:
            scored = evaluate_in_domain(cfg, label, models[label])
            log.info("in-domain accuracy of the %s model: %.4f on %d rows", label, scored["accuracy"], scored["n"])
            update_results(path, in_domain={"task": cfg.data.task, "metric": "accuracy", "n": scored["n"],
                                            label: scored["accuracy"]})

    if cfg.eval.general_tasks:
        from s3ft.eval.general import evaluate_general

        for label in labels:
            scores = evaluate_general(
                models[label], cfg.eval.general_tasks, backend=cfg.eval.general_backend, limit=cfg.eval.general_limit,
                batch_size=cfg.eval.general_batch_size, include_path=cfg.eval.include_path, seed=cfg.seed,
                num_fewshot=cfg.eval.num_fewshot, device=_device(),
            )
            log.info("general benchmarks of the %s model: %s", label, scores)
            update_results(path, general={label: scores})

    merged = run_dir / "data" / "merged.jsonl"
    if cfg.eval.likelihood and merged.is_file():
        from s3ft.eval.likelihood import target_nll

        measured = target_nll(base, merged, max_rows_per_source=cfg.eval.likelihood_rows, device=_device())
        update_results(path, likelihood={"base_model": base, **measured})
    return update_results(path)


def _device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
