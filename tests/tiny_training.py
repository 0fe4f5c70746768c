"""Teach a tiny model a few fixed texts by heart, so tests can predict what greedy decoding says.

A random model's greedy output hangs on near-ties, so two backends (fp32 vs bf16, different
kernels) may disagree; a memorised model answers with wide margins, and a test can tell in advance
what a correct pipeline must produce.
"""

from __future__ import annotations

from pathlib import Path


def memorize(model_dir: str | Path, texts: list[str], steps: int = 300, lr: float = 3e-3, seed: int = 0) -> None:
    """Train the model at `model_dir` in place on `texts` (whole strings, EOS included, no special
    tokens added) with plain AdamW on one batch of all texts, then save it back (HF format).

    One thread: a model this small gains nothing from more, and on a busy machine OpenMP threads
    waiting for each other made it ten times slower."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _train(model_dir, texts, steps, lr, seed)
    finally:
        torch.set_num_threads(threads)


def _train(model_dir: str | Path, texts: list[str], steps: int, lr: float, seed: int) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    tokenizer.padding_side = "right"
    batch = tokenizer(texts, add_special_tokens=False, padding=True, return_tensors="pt")
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    warmup = max(1, steps // 10)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + 1) / warmup, max(0.0, (steps - s) / max(1, steps - warmup)))
    )
    model.train()
    for _ in range(steps):
        loss = model(**batch, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
    model.eval()
    model.save_pretrained(str(model_dir))
