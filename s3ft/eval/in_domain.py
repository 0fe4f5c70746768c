"""In-domain accuracy: the task's test split, answered greedily and scored by the task's judge.

The same load → generate → judge stages as the data engine, into stage directories of their own,
so an interrupted evaluation resumes shard by shard as well.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from s3ft.config import Config, stage_key
from s3ft.data.load import run_load
from s3ft.data.prompts import load_templates
from s3ft.errors import ConfigError
from s3ft.eval.base_cache import cached
from s3ft.generation.base import Sampling
from s3ft.generation.mapper import GenerateInto, lazy_pool
from s3ft.judges.mapper import judge_into
from s3ft.models.chat import render_prompt
from s3ft.models.resolve import context_length, load_tokenizer, prompt_fits
from s3ft.runtime.shards import ShardStore, file_digest, read_jsonl, write_jsonl
from s3ft.runtime.stage import Step, run_steps

if TYPE_CHECKING:
    from s3ft.generation.keeper import EngineKeeper


def model_fingerprint(path: str) -> list[tuple[str, int, int]]:
    """Names, sizes and mtimes of the model's files: a retrained `model/` gets fresh eval stages."""
    return sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in Path(path).iterdir() if p.is_file())


SPLIT_NAMES = {"test", "train", "validation", "valid", "val", "dev", "eval"}


def eval_name(cfg: Config) -> str:
    """The in-domain column's name: `eval.name`, else the test file's (`gsm8k/test.jsonl` → "gsm8k test")."""
    if cfg.eval.name:
        return cfg.eval.name
    if not cfg.eval.data_path:
        return cfg.data.task
    path = Path(cfg.eval.data_path)
    stem = path.name if path.is_dir() else path.stem
    return f"{path.parent.name} {stem}" if stem.lower() in SPLIT_NAMES and path.parent.name else stem


@dataclass
class EvalSet:
    loaded: ShardStore
    output: Path  # per-row outputs


def evaluate_in_domain(cfg: Config, label: str, model_path: str, cache: Path | None = None,
                       keeper: EngineKeeper | None = None) -> dict[str, dict[str, Any]]:
    """Accuracy of the model at `model_path` on each in-domain set the run has: `test` (eval.data_path) and
    `validation` (data/validation.jsonl, carved from the training set), all through one engine pool
    (the `keeper`'s, generation/keeper.py, where it keeps engines between evaluations).

    Per-row outputs go to eval/in_domain_LABEL.jsonl and eval/validation_LABEL.jsonl. With `cache`, the
    scores and outputs are computed once per (model files, sets, settings) and copied from there."""
    run_dir = Path(cfg.output_dir)
    gen = cfg.generation
    tokenizer = load_tokenizer(model_path, cfg.model.trust_remote_code)
    context = context_length(model_path, cfg.model.max_model_len)
    sets = _sets(cfg, label, tokenizer, context)
    if not sets:
        raise ConfigError("eval.data_path is not set and the run has no validation split: nothing to evaluate on")
    greedy = Sampling.from_config(gen, temperature=0.0, top_p=1.0)
    fingerprint = model_fingerprint(model_path)
    judged = {}
    for name, evalset in sets.items():
        prefix = "eval" if name == "test" else name
        generated = ShardStore(run_dir, f"{prefix}_generate_{label}",
                               stage_key(evalset.loaded.key, fingerprint, gen.backend, vars(greedy)))
        judged[name] = (generated, ShardStore(run_dir, f"{prefix}_judge_{label}",
                                              stage_key(generated.key, cfg.judge.cache_key())))

    def prompt(row: dict[str, Any]) -> str:
        return render_prompt(tokenizer, row["messages"])

    def compute() -> dict[str, dict[str, Any]]:
        with contextlib.ExitStack() as stack:
            pool = lazy_pool(stack, cfg.model.model_copy(update={"path": model_path}), gen, (run_dir, f"eval-{label}"),
                             keeper)
            for name, (generated, scored) in judged.items():
                run_steps(sets[name].loaded, [
                    Step(f"eval {label} ({name}): generate", generated,
                         GenerateInto(pool, greedy, "response", prompt, first=True)),
                    Step(f"eval {label} ({name}): judge", scored,
                         stack.enter_context(judge_into(cfg.judge, "response", "verdict", pool.cpu_slots))),
                ], stream=gen.stream)
        return {name: _write_outputs(scored, sets[name].output) for name, (_, scored) in judged.items()}

    key = stage_key(label, *(scored.key for _, scored in judged.values()))
    return cached(cache, key, compute, [s.output for s in sets.values()])


def _sets(cfg: Config, label: str, tokenizer: Any, context: int | None) -> dict[str, EvalSet]:
    run_dir = Path(cfg.output_dir)
    gen = cfg.generation
    sets = {}
    if cfg.eval.data_path:
        data = cfg.data.model_copy(update={"path": cfg.eval.data_path, "split": cfg.eval.split,
                                           "limit": cfg.eval.limit})
        templates = load_templates(data.task, data.prompt_template)
        check = prompt_fits(tokenizer, context, gen.max_tokens)
        loaded = ShardStore(run_dir, "eval_load", stage_key(data, vars(templates), str(gen.shard_size), str(context),
                                                            str(gen.max_tokens)))
        if not loaded.finished:
            run_load(data, templates, loaded, gen.shard_size, run_dir / "eval" / "rejects.jsonl", check)
        sets["test"] = EvalSet(loaded, run_dir / "eval" / f"in_domain_{label}.jsonl")
    validation = run_dir / "data" / "validation.jsonl"
    if validation.is_file():
        loaded = ShardStore(run_dir, "validation_load", stage_key(file_digest(validation), str(gen.shard_size)))
        if not loaded.finished:
            _shard(read_jsonl(validation), loaded, gen.shard_size)
        sets["validation"] = EvalSet(loaded, run_dir / "eval" / f"validation_{label}.jsonl")
    return sets


def _shard(rows: list[dict[str, Any]], store: ShardStore, size: int) -> None:
    started = time.time()
    chunks = [rows[i:i + size] for i in range(0, len(rows), size)]
    for index, chunk in enumerate(chunks):
        store.write(index, chunk)
    store.finish(len(chunks), len(rows), started)


def _write_outputs(judged: ShardStore, path: Path) -> dict[str, Any]:
    correct = total = 0

    def outputs() -> Any:
        nonlocal correct, total
        for row in judged.rows():
            total += 1
            correct += row["verdict"]["correct"]
            yield {"id": row["id"], "question": row["question"], "gold": row["gold"], "response": row["response"],
                   "correct": row["verdict"]["correct"], "reason": row["verdict"]["reason"]}

    write_jsonl(path, outputs())
    return {"accuracy": correct / total if total else 0.0, "n": total}
