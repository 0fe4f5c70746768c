"""Pretrain the demo's base model: a tiny char-level Llama that adds (asked one way only), restates
gold answers in its own style and reverses words, so fine-tuning has something to teach and
something to erode.

Plain torch in one process and one thread (the model has 0.35M parameters; one thread also makes
the result the same from run to run). Batches of 64 rows of one task each, drawn from a mix of
additions, restate requests (gold style in, own style out: what S3FT's paraphrase step asks) and
word reversals; AdamW with warmup and linear decay. The own style's digit-by-digit working and
weight decay make addition click well within the steps: without them, the step at which the tiny
model learnt to add moved by hundreds from one seed to the next, and the base model's score with
it. The loss is on the answer tokens only, of the chat-template text that generation and
fine-tuning use too.
"""

from __future__ import annotations

import json
import logging
import random
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from s3ft.demo.tasks import REVERSE_PROMPT, Addition, DemoSplits, make_splits, random_word
from s3ft.models.chat import IGNORE, encode_examples, labels, render_prompt

log = logging.getLogger(__name__)
SUMMARY = "pretrain.json"


@dataclass(frozen=True)
class PretrainSettings:
    steps: int = 1400
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 0.1
    warmup_steps: int = 100
    add_share: float = 0.5
    restate_share: float = 0.1
    seed: int = 0


def build_demo_model(path: str | Path, settings: PretrainSettings = PretrainSettings()) -> Path:
    """Pretrain and write the base model to `path` (HF format, plus pretrain.json with its scores).

    Written to a sibling folder first and renamed, so an interrupted build never looks finished."""
    import torch

    from s3ft.models.tiny import build_char_tokenizer, build_tiny_model

    path = Path(path)
    tmp = path.with_name(path.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    build_tiny_model(tmp, seed=settings.seed)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a model this small gains nothing from more, and a busy machine loses
    try:
        splits = make_splits(settings.seed)
        tokenizer = build_char_tokenizer()
        started = time.time()
        model = _train(tmp, tokenizer, splits, settings)
        scores = evaluate(model, tokenizer, splits)
    finally:
        torch.set_num_threads(threads)
    model.save_pretrained(tmp)
    summary = {"settings": asdict(settings), "seconds": round(time.time() - started, 1), **scores}
    (tmp / SUMMARY).write_text(json.dumps(summary, indent=2) + "\n")
    shutil.rmtree(path, ignore_errors=True)
    tmp.rename(path)
    log.info("demo base model at %s: %s", path, scores)
    return path


def _examples(splits: DemoSplits, settings: PretrainSettings, rng: random.Random) -> list[tuple[str, str]]:
    """One batch of (user turn, answer) pairs, all of one task drawn from the mix: rows of one task
    have similar lengths, so the batch carries little padding."""
    task = rng.choices(["add", "restate", "reverse"], [settings.add_share, settings.restate_share,
                                                      1.0 - settings.add_share - settings.restate_share])[0]
    if task == "add":
        return [(x.question, x.own) for x in rng.choices(splits.pretrain, k=settings.batch_size)]
    if task == "restate":
        return [(x.paraphrase_question, x.own) for x in rng.choices(splits.pretrain, k=settings.batch_size)]
    held_out = set(splits.reverse_test)
    words: list[str] = []
    while len(words) < settings.batch_size:
        if (word := random_word(rng)) not in held_out:
            words.append(word)
    return [(REVERSE_PROMPT.format(word=w), w[::-1]) for w in words]


def _train(model_dir: Path, tokenizer: Any, splits: DemoSplits, settings: PretrainSettings) -> Any:
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(settings.seed)
    rng = random.Random(settings.seed + 1)
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, betas=(0.9, 0.95),
                                  weight_decay=settings.weight_decay)
    warmup, steps = settings.warmup_steps, settings.steps
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + 1) / warmup, max(0.0, (steps - s) / max(1, steps - warmup)))
    )
    model.train()
    for step in range(steps):
        ids, labels, mask = _batch(tokenizer, _examples(splits, settings, rng))
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        if (step + 1) % 200 == 0:
            log.info("pretrain step %d/%d: loss %.4f", step + 1, steps, loss.item())
    model.eval()
    return model


def _batch(tokenizer: Any, pairs: list[tuple[str, str]]) -> tuple[Any, Any, Any]:
    """Right-padded ids, labels on the answer and its EOS only, attention mask."""
    import torch

    examples = encode_examples(tokenizer, [user for user, _ in pairs], [answer for _, answer in pairs])
    rows = [(prompt + target, labels(prompt, target)) for prompt, target in examples]
    width = max(len(ids) for ids, _ in rows)
    pad = tokenizer.pad_token_id
    ids = torch.tensor([r + [pad] * (width - len(r)) for r, _ in rows])
    targets = torch.tensor([lab + [IGNORE] * (width - len(lab)) for _, lab in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r, _ in rows])
    return ids, targets, mask


def greedy(model: Any, tokenizer: Any, users: list[str], max_new_tokens: int = 64, batch_size: int = 100) -> list[str]:
    """The model's greedy answers to user turns, through the hf generation backend."""
    from s3ft.generation.base import Sampling
    from s3ft.generation.hf_backend import HFBackend

    backend = HFBackend.from_model(model, tokenizer, batch_size=batch_size)
    prompts = [render_prompt(tokenizer, [{"role": "user", "content": u}]) for u in users]
    return [completions[0] for completions in backend.generate(prompts, Sampling(max_tokens=max_new_tokens))]


def evaluate(model: Any, tokenizer: Any, splits: DemoSplits) -> dict[str, float]:
    """Greedy accuracy on the fine-tuning set (own answer, restated gold), the test set and reversal."""
    from s3ft.judges.math import MathJudge

    judge = MathJudge()

    def accuracy(users: list[str], items: list[Addition]) -> float:
        answers = greedy(model, tokenizer, users)
        verdicts = [judge.judge_row({"response": r, "gold": x.gold}) for r, x in zip(answers, items)]
        return sum(v.correct for v in verdicts) / len(items)

    reversed_ = greedy(model, tokenizer, [REVERSE_PROMPT.format(word=w) for w in splits.reverse_test])
    return {
        "finetune_self": accuracy([x.question for x in splits.finetune], splits.finetune),
        "finetune_restate": accuracy([x.paraphrase_question for x in splits.finetune], splits.finetune),
        "test_addition": accuracy([x.question for x in splits.test], splits.test),
        "test_reverse": sum(r == w[::-1] for r, w in zip(reversed_, splits.reverse_test)) / len(splits.reverse_test),
    }
