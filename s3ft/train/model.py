"""The model on each rank: loaded under ZeRO-3 init, optional LoRA, optimizer groups, the schedule.

`HfDeepSpeedConfig` must be alive while `from_pretrained` runs, so transformers creates every weight
already partitioned across ranks (a 70B model never sits whole on one GPU); the caller keeps the
returned handle until training ends.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from s3ft.config.train import TrainConfig


def load_model(model_path: str, cfg: TrainConfig, ds_config: dict[str, Any], dtype: torch.dtype):
    """(model, handle): the causal LM, built partitioned when ds_config is ZeRO-3; keep `handle` alive."""
    from transformers import AutoModelForCausalLM
    from transformers.integrations import HfDeepSpeedConfig

    from s3ft.train.dsconfig import zero_stage

    handle = HfDeepSpeedConfig(ds_config) if zero_stage(ds_config) == 3 else None
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype, attn_implementation=cfg.attn_implementation)
    model.config.use_cache = False
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if cfg.lora is not None:
        from s3ft.train.lora import add_lora

        torch.manual_seed(cfg.seed)  # the same adapter init on every rank
        model = add_lora(model, cfg.lora)
    return model, handle


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Trainable parameters; biases and norm weights (1-D) never decay."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        ndim = len(getattr(p, "ds_shape", p.shape))
        (no_decay if ndim < 2 or name.endswith(".bias") else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def count_parameters(model: torch.nn.Module) -> int:
    return sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters())


def build_optimizer(groups: list[dict[str, Any]], cfg: TrainConfig, on_gpu: bool) -> torch.optim.Optimizer:
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.adam_betas), eps=cfg.adam_eps, fused=on_gpu or None)


def lr_lambda(total_steps: int, warmup_ratio: float, min_lr_ratio: float):
    """Linear warmup to 1, cosine decay to min_lr_ratio at the last step (a factor on train.lr)."""
    warmup = math.ceil(total_steps * warmup_ratio)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = (step - warmup) / max(1, total_steps - warmup)
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    return factor

