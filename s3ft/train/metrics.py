"""What the run reports, on rank 0: a tqdm bar, TensorBoard scalars, JSONL files under run_dir/logs, and W&B.

`metrics.jsonl` holds one line per logged step (loss, lr, grad norm, tokens/s, MFU) and eval line;
`rows.jsonl` one line per step with the ids of the rows it trained (provenance, and the proof that
a resumed run trains each row once). On resume, lines after the checkpoint step are dropped. W&B,
when in `report_to`, gets the same values as a new run per start (its files under run_dir/logs/wandb
unless WANDB_DIR is set); wandb is optional and imported only by rank 0.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from s3ft.config.train import TrainConfig

# Dense bf16 peak TFLOP/s per device, for the MFU estimate.
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "H800": 989.0, "A100": 312.0, "A800": 312.0, "L40S": 362.0,
               "L40": 181.0, "A10": 125.0, "A6000": 155.0, "L4": 121.0, "V100": 125.0}


def peak_tflops(configured: float | None, on_gpu: bool) -> float | None:
    if configured is not None:
        return configured
    if not on_gpu:
        return None
    import torch

    name = torch.cuda.get_device_name()
    return next((v for k, v in PEAK_TFLOPS.items() if k in name), None)


@dataclass(frozen=True)
class FlopCounts:
    """Training FLOPs per token of a model, from its parameters, for the MFU estimate.

    A weight costs 2 FLOPs per token forward, 2 for the input gradient and 2 for its own gradient: 6 when
    it trains, 4 when frozen (LoRA's base weights). Input embeddings are lookups (no FLOPs); MoE expert
    weights count by the share of experts a token visits; the LM head runs on target tokens only (see
    loss.py). Causal attention adds 6 * layers * heads * head_dim * len^2 per row (QK^T and AV at 2 FLOPs
    per multiply-add over half the square, x3 for training). Recomputation under gradient checkpointing is not counted, as usual.
    """

    body: float  # FLOPs per token of every weight but the embedding and the head
    head: float  # FLOPs per target token of the LM head
    layers: int
    attn_dim: int  # heads x head_dim

    def step(self, tokens: int, target_tokens: int, sum_sq_len: int) -> float:
        """FLOPs of a step over `tokens` tokens (`target_tokens` with a label) in rows whose squared lengths sum
        to `sum_sq_len`."""
        return self.body * tokens + self.head * target_tokens + 6.0 * self.layers * self.attn_dim * sum_sq_len


def attention_shape(config) -> tuple[int, int]:
    """(layers, heads x head_dim) of a transformers config; head_dim falls back to hidden / heads (it is None
    in some configs, e.g. Mixtral's)."""
    config = getattr(config, "text_config", None) or config
    heads = getattr(config, "num_attention_heads", None) or 0
    hidden = getattr(config, "hidden_size", None) or 0
    head_dim = getattr(config, "head_dim", None) or (hidden // heads if heads else 0)
    return int(getattr(config, "num_hidden_layers", None) or 0), int(heads * head_dim)


def expert_share(config) -> float:
    """The share of a MoE layer's experts one token visits (1 for dense models)."""
    config = getattr(config, "text_config", None) or config
    per_token = getattr(config, "num_experts_per_tok", None)
    experts = getattr(config, "num_local_experts", None) or getattr(config, "num_experts", None)
    return per_token / experts if per_token and experts else 1.0


def flop_counts(model) -> FlopCounts:
    """FlopCounts of a causal LM (or a peft model around one); ZeRO-3 partitioned weights count whole."""
    lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    embed, head = lm.get_input_embeddings().weight, lm.get_output_embeddings().weight
    share = expert_share(lm.config)
    body = head_flops = 0.0
    for name, p in lm.named_parameters(remove_duplicate=True):
        per_weight = 6.0 if p.requires_grad else 4.0
        numel = getattr(p, "ds_numel", p.numel())
        if p is head:
            head_flops = per_weight * numel
        elif p is not embed:
            body += per_weight * numel * (share if ".experts." in f".{name}." else 1.0)
    return FlopCounts(body, head_flops, *attention_shape(lm.config))


def truncate_jsonl(path: Path, last_step: int) -> None:
    """Keep the lines of steps <= last_step (the checkpoint a resumed run continues from)."""
    if not path.is_file():
        return
    kept = [line for line in path.read_text().splitlines() if line and json.loads(line).get("step", 0) <= last_step]
    path.write_text("".join(line + "\n" for line in kept))


class Reporter:
    def __init__(self, log_dir: Path, *, enabled: bool, cfg: TrainConfig, total_steps: int, start_step: int):
        self.enabled = enabled
        self.bar = self.tb = self.metrics = self.rows = self.wandb = None
        if not enabled:
            return
        from tqdm.auto import tqdm

        log_dir.mkdir(parents=True, exist_ok=True)
        for name in ("metrics.jsonl", "rows.jsonl"):
            truncate_jsonl(log_dir / name, start_step)
        if "tensorboard" in cfg.report_to:
            self.tb = _summary_writer(log_dir / "tensorboard", purge_step=start_step + 1)
        if "jsonl" in cfg.report_to:
            self.metrics = (log_dir / "metrics.jsonl").open("a")
        if "wandb" in cfg.report_to:
            self.wandb = _wandb_run(log_dir, cfg)
        self.rows = (log_dir / "rows.jsonl").open("a")
        self.bar = tqdm(total=total_steps, initial=start_step, desc="train", unit="step", dynamic_ncols=True)

    def step(self, step: int, values: dict[str, Any] | None, row_ids: list[str]) -> None:
        """Every step: its row ids; `values` on logging steps only."""
        if not self.enabled:
            return
        self.rows.write(json.dumps({"step": step, "ids": row_ids}) + "\n")
        self.rows.flush()
        self.bar.update(1)
        if values is not None:
            self._write(step, values, "train")
            self.bar.set_postfix(loss=f"{values['loss']:.4f}", lr=f"{values['lr']:.2e}", refresh=False)

    def eval(self, step: int, values: dict[str, Any]) -> None:
        if self.enabled:
            self._write(step, values, "eval")
            self.bar.write(f"step {step}: " + ", ".join(f"eval_{k}={v:.4f}" for k, v in values.items()))

    def _write(self, step: int, values: dict[str, Any], split: str) -> None:
        if self.tb is not None:
            for k, v in values.items():
                if v is not None:
                    self.tb.add_scalar(f"{split}/{k}", v, step)
        if self.metrics is not None:
            self.metrics.write(json.dumps({"step": step, "split": split, **values}) + "\n")
            self.metrics.flush()
        if self.wandb is not None:
            self.wandb.log({f"{split}/{k}": v for k, v in values.items() if v is not None}, step=step)

    def close(self) -> None:
        for thing in (self.bar, self.tb, self.metrics, self.rows):
            if thing is not None:
                thing.close()
        if self.wandb is not None:
            self.wandb.finish()


def _summary_writer(path: Path, purge_step: int):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # torch's writer needs the tensorboard package; tensorboardX comes with ray[train]
        from tensorboardX import SummaryWriter
    return SummaryWriter(str(path), purge_step=purge_step)


def _wandb_run(log_dir: Path, cfg: TrainConfig):
    """A W&B run for this start of training; names come from the config, else WANDB_* variables, else defaults."""
    import wandb

    return wandb.init(
        project=cfg.wandb_project or os.environ.get("WANDB_PROJECT") or "s3ft",
        name=cfg.wandb_run_name or os.environ.get("WANDB_NAME") or log_dir.parent.name,
        dir=os.environ.get("WANDB_DIR") or str(log_dir),
        config=cfg.model_dump(mode="json"),
    )
