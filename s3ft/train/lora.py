"""LoRA through peft: add adapters, gather them out of ZeRO-3 partitions, save, merge into the base.

Under ZeRO-3 the adapters are partitioned like every other parameter; they are tiny, so saving
gathers them whole on every rank for a moment and rank 0 writes them in peft's format.
"""

from __future__ import annotations

from pathlib import Path

import torch

from s3ft.config.train import LoraConfig


def add_lora(model, cfg: LoraConfig):
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    peft_cfg = PeftLoraConfig(
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=cfg.target_modules,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, peft_cfg)


def gathered_adapter_state(model) -> dict[str, torch.Tensor]:
    """Full (unpartitioned) trainable parameters on CPU, by name; call on every rank."""
    import deepspeed

    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    params = [p for _, p in named]
    with deepspeed.zero.GatheredParameters(params, modifier_rank=None, enabled=hasattr(params[0], "ds_id")):
        return {n: p.detach().cpu().clone() for n, p in named}


def save_adapter(model, state: dict[str, torch.Tensor], out_dir: Path) -> Path:
    """Write adapter_config.json and adapter_model.safetensors (rank 0 only)."""
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import save_file

    out_dir.mkdir(parents=True, exist_ok=True)
    adapter = get_peft_model_state_dict(model, state_dict=state)
    if not adapter:
        raise RuntimeError("LoRA adapter state is empty; nothing was trained")
    save_file({k: v.contiguous() for k, v in adapter.items()}, out_dir / "adapter_model.safetensors",
              metadata={"format": "pt"})
    model.peft_config["default"].save_pretrained(out_dir)
    return out_dir


def merge_adapter(base_path: str, adapter_dir: Path, dtype: torch.dtype):
    """The base model with the adapter folded into its weights (plain transformers model, on CPU)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    unset_hf_deepspeed_config()  # a plain CPU load, not a partitioned one
    base = AutoModelForCausalLM.from_pretrained(base_path, dtype=dtype)
    return PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
