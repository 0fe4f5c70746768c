"""In-domain accuracy: the task's test split, answered greedily and scored by the task's judge.

The same load → generate → judge stages as the data engine, into stage directories of their own,
so an interrupted evaluation resumes shard by shard as well.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from s3ft.config import Config, stage_key
from s3ft.data.load import run_load
from s3ft.data.prompts import load_templates
from s3ft.errors import ConfigError
from s3ft.generation.base import Sampling
from s3ft.generation.mapper import GenerateInto, lazy_pool
from s3ft.judges.mapper import judge_into
from s3ft.models.chat import render_prompt
from s3ft.models.resolve import context_length, load_tokenizer, prompt_fits
from s3ft.runtime.shards import ShardStore, write_jsonl
from s3ft.runtime.stage import Step, run_steps


def model_fingerprint(path: str) -> list[tuple[str, int, int]]:
    """Names, sizes and mtimes of the model's files: a retrained `model/` gets fresh eval stages."""
    return sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in Path(path).iterdir() if p.is_file())


def evaluate_in_domain(cfg: Config, label: str, model_path: str) -> dict[str, Any]:
    """Accuracy of the model at `model_path` on `eval.data_path`; per-row outputs to eval/in_domain_LABEL.jsonl."""
    if cfg.eval.data_path is None:
        raise ConfigError("eval.data_path is not set: no test split to evaluate on")
    run_dir = Path(cfg.output_dir)
    data = cfg.data.model_copy(update={"path": cfg.eval.data_path, "split": cfg.eval.split, "limit": cfg.eval.limit})
    templates = load_templates(data.task, data.prompt_template)
    gen = cfg.generation
    tokenizer = load_tokenizer(model_path, cfg.model.trust_remote_code)
    context = context_length(model_path, cfg.model.max_model_len)
    check = prompt_fits(tokenizer, context, gen.max_tokens)
    loaded = ShardStore(run_dir, "eval_load", stage_key(data, vars(templates), str(gen.shard_size), str(context),
                                                        str(gen.max_tokens)))
    if not loaded.finished:
        run_load(data, templates, loaded, gen.shard_size, run_dir / "eval" / "rejects.jsonl", check)
    greedy = Sampling.from_config(gen, temperature=0.0, top_p=1.0)
    generated = ShardStore(
        run_dir, f"eval_generate_{label}", stage_key(loaded.key, model_fingerprint(model_path), gen.backend, vars(greedy))
    )
    judged = ShardStore(run_dir, f"eval_judge_{label}", stage_key(generated.key, cfg.judge.cache_key()))

    def prompt(row: dict[str, Any]) -> str:
        return render_prompt(tokenizer, row["messages"])

    with contextlib.ExitStack() as stack:
        pool = lazy_pool(stack, cfg.model.model_copy(update={"path": model_path}), gen)
        run_steps(loaded, [
            Step(f"eval {label}: generate", generated, GenerateInto(pool, greedy, "response", prompt, first=True)),
            Step(f"eval {label}: judge", judged, stack.enter_context(judge_into(cfg.judge, "response", "verdict"))),
        ], stream=gen.stream)

    correct = total = 0

    def outputs() -> Any:
        nonlocal correct, total
        for row in judged.rows():
            total += 1
            correct += row["verdict"]["correct"]
            yield {"id": row["id"], "question": row["question"], "gold": row["gold"], "response": row["response"],
                   "correct": row["verdict"]["correct"], "reason": row["verdict"]["reason"]}

    write_jsonl(run_dir / "eval" / f"in_domain_{label}.jsonl", outputs())
    return {"accuracy": correct / total if total else 0.0, "n": total}
