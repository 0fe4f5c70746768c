"""`s3ft data`: load → generate → judge → paraphrase → judge → select, each stage resumable.

The four middle steps run as one stream (`generation.stream`): a shard is judged as soon as it is
generated, and its failures are paraphrased and judged again while later shards generate.

This file reads like the algorithm; the Ray and vLLM details live in `generation` and `judges`,
the resumable stages in `runtime`, the S3FT decisions in `selection`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from s3ft.config import Config, save_config, stage_key
from s3ft.data.leaks import LeakCheck, leak_check
from s3ft.data.load import run_load
from s3ft.data.prompts import Templates, load_templates
from s3ft.data.split import carve
from s3ft.data.tasks import paraphrase_messages
from s3ft.generation.base import Sampling
from s3ft.generation.mapper import GenerateInto, lazy_pool
from s3ft.judges.mapper import judge_into
from s3ft.models.chat import render_prompt
from s3ft.models.resolve import context_length, load_tokenizer, prompt_fits, resolve_model
from s3ft.runtime.preflight import check_output_dir
from s3ft.runtime.shards import ShardStore, write_jsonl
from s3ft.runtime.stage import Step, run_steps
from s3ft.selection import needs_paraphrase, select_all, stats

log = logging.getLogger(__name__)


def run_data(cfg: Config) -> dict[str, Any]:
    run_dir = Path(cfg.output_dir)
    check_output_dir(run_dir)
    save_config(cfg, run_dir / "config.yaml")
    templates = load_templates(cfg.data.task, cfg.data.prompt_template, cfg.paraphrase.template)
    generates = cfg.selection.strategy != "sft"
    model_path = resolve_model(cfg.model) if generates else None
    tokenizer = load_tokenizer(model_path, cfg.model.trust_remote_code) if model_path else None
    # The prompts decide this stage, not the paraphrase template (its own stage keys it) or the path of
    # the template file (its content is in `templates`): editing either keeps the generated answers.
    prompts = {k: v for k, v in vars(templates).items() if k != "paraphrase"}
    load_key = [cfg.data.model_dump(mode="json", exclude={"prompt_template"}), prompts, str(cfg.generation.shard_size)]
    check = None
    if model_path:
        context = context_length(model_path, cfg.model.max_model_len)
        check = prompt_fits(tokenizer, context, cfg.generation.max_tokens)
        load_key += [cfg.model.path, str(context), str(cfg.generation.max_tokens)]  # prompts vetted against them
    stages = Path(cfg.stages_dir) if cfg.stages_dir else run_dir  # a sweep's runs share theirs
    loaded = ShardStore(stages, "load", stage_key(*load_key))
    rejects = loaded.dir / "rejects.jsonl"  # kept with the stage: every run that shares it gets a copy
    if not loaded.finished:
        run_load(cfg.data, templates, loaded, cfg.generation.shard_size, rejects, check)
    if rejects.is_file():
        (run_dir / "data").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(rejects, run_dir / "data" / "rejects.jsonl")
    validation = run_dir / "data" / "validation.jsonl"
    if cfg.data.validation_rows:
        carved = ShardStore(stages, "carve", stage_key(loaded.key, str(cfg.data.validation_rows)))
        loaded, held = carve(loaded, carved, cfg.data.validation_rows, cfg.generation.shard_size)
        write_jsonl(validation, held)
    else:
        validation.unlink(missing_ok=True)
    final = _self_and_paraphrase(cfg, stages, loaded, templates, model_path, tokenizer, check) if generates else loaded
    return _select(run_dir, final, cfg.selection.strategy, loaded.manifest, leak_check(cfg.data.task, cfg.paraphrase))


def _self_and_paraphrase(
    cfg: Config, stages: Path, loaded: ShardStore, templates: Templates, model_path: str, tokenizer: Any,
    check: Callable[[list[dict[str, str]]], str | None],
) -> ShardStore:
    gen = cfg.generation
    rft = cfg.selection.strategy == "rft"
    sampling = Sampling.from_config(gen, temperature=cfg.selection.sample_temperature, n=cfg.selection.num_samples) \
        if rft else Sampling.from_config(gen)
    model_key = [cfg.model.path, cfg.model.dtype, gen.backend]
    generated = ShardStore(stages, "generate", stage_key(loaded.key, model_key, vars(sampling)))
    judge_key = cfg.judge.cache_key()
    judged = ShardStore(stages, "judge", stage_key(generated.key, judge_key))

    with contextlib.ExitStack() as stack:
        pool = lazy_pool(stack, cfg.model.model_copy(update={"path": model_path}), gen, (Path(cfg.output_dir), "generate"))
        judge = stack.enter_context(judge_into(cfg.judge, "responses", "verdicts", pool.cpu_slots))
        steps = [
            Step("generate", generated, GenerateInto(pool, sampling, "responses",
                                                     lambda row: render_prompt(tokenizer, row["messages"]))),
            Step("judge", judged, judge),
        ]
        if cfg.selection.strategy == "s3ft":
            greedy_one = replace(sampling, n=1)
            paraphrased = ShardStore(stages, "paraphrase", stage_key(judged.key, vars(templates), vars(greedy_one)))
            para_judged = ShardStore(stages, "judge_paraphrase", stage_key(paraphrased.key, judge_key))

            def paraphrase_prompt(row: dict[str, Any]) -> str | None:
                if not needs_paraphrase(row):
                    return None
                messages = paraphrase_messages(row, templates)
                if problem := check(messages):  # the gold makes it longer: no paraphrase, the gold stays the target
                    log.warning("row %s: no paraphrase: %s", row["id"], problem)
                    return None
                return render_prompt(tokenizer, messages)

            # Priority over new shards: a failed row's paraphrase takes the next free room in the engines.
            # Its judging yields to the responses': their verdicts are what the engines paraphrase next.
            steps += [
                Step("paraphrase", paraphrased,
                     GenerateInto(pool, greedy_one, "paraphrase", paraphrase_prompt, first=True, priority=1)),
                Step("judge paraphrase", para_judged, stack.enter_context(
                    judge_into(cfg.judge, "paraphrase", "paraphrase_verdict", pool.cpu_slots, after=judge))),
            ]
        return run_steps(loaded, steps, stream=gen.stream)


def _select(
    run_dir: Path, final: ShardStore, strategy: str, load_manifest: dict[str, Any], leak: LeakCheck | None
) -> dict[str, Any]:
    counts: Counter[str] = Counter()
    data_dir = run_dir / "data"
    write_jsonl(data_dir / "merged.jsonl", select_all(final.rows(), strategy, counts, leak))
    summary = stats(strategy, counts, input_rows=load_manifest["input_rows"], rejected=load_manifest["rejected"],
                    validation_rows=load_manifest.get("validation_rows", 0))
    (data_dir / "stats.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
