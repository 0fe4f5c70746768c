"""The final model as a plain Hugging Face folder: 16-bit sharded safetensors, config, tokenizer.

ZeRO-3 weights are gathered one layer at a time onto rank 0's CPU (DeepSpeed's consolidated state
dict), so no GPU ever holds the whole model. The folder is written next to its destination and moved
into place at the end: `model/` is either complete or absent.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def consolidated_state_dict(engine) -> dict[str, torch.Tensor] | None:
    """Full weights on rank 0 (None elsewhere); collective under ZeRO-3."""
    import deepspeed.comm as dist

    if engine.zero_optimization_partition_weights():
        return engine._zero3_consolidated_16bit_state_dict()
    if dist.get_rank() != 0:
        return None
    return {k: v.detach().cpu() for k, v in engine.module.state_dict().items()}


def write_hf_folder(model, state: dict[str, torch.Tensor] | None, tokenizer, out_dir: Path, *, dtype: str,
                    max_shard_size: str) -> Path:
    """Rank 0: save `model` (with `state` as its weights, if given) as a complete HF folder at out_dir."""
    target = DTYPES[dtype]
    tmp = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    if state is not None:
        state = {k: v.to(target) if v.is_floating_point() else v for k, v in state.items()}
    else:
        model = model.to(target)
    model.save_pretrained(tmp, state_dict=state, max_shard_size=max_shard_size)
    _set_config_dtype(tmp / "config.json", dtype)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)
    return out_dir


def _set_config_dtype(path: Path, dtype: str) -> None:
    config = json.loads(path.read_text())
    config["dtype"] = dtype
    config.pop("torch_dtype", None)
    config["use_cache"] = True  # training turned the cache off; generation wants it
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
