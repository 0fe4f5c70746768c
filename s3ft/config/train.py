"""The `train` section of the experiment config: every knob of the trainer, one line of help each."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from s3ft.config.section import Section

# transformers turns restarting position ids into a block-diagonal mask for these, per sequence of a batch.
MASKED_ATTENTION = ("sdpa", "eager", "flex_attention")


def is_flash_attention(name: str) -> bool:
    """Flash-attention kernels (flash_attention_2/3, hub kernels): "flash" in the name, as transformers tests it;
    its paged variants serve generation from a KV cache, not training."""
    return "flash" in name and not name.startswith("paged")


class LoraConfig(Section):
    r: int = Field(8, gt=0, description="LoRA rank (the paper: 8).")
    alpha: int = Field(16, gt=0, description="LoRA scaling numerator (the paper: 16).")
    dropout: float = Field(0.1, ge=0.0, lt=1.0, description="Dropout on the LoRA input (the paper: 0.1).")
    target_modules: list[str] | Literal["all-linear"] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"],
        description="Module names that get adapters, or 'all-linear'.",
    )


class TrainConfig(Section):
    deepspeed: str = Field(
        "zero3",
        description="DeepSpeed JSON path, or zero3 | zero3_offload | zero2 (configs/deepspeed); we fill its 'auto's.",
    )
    epochs: float = Field(3.0, gt=0, description="Passes over the training rows (ignored when max_steps > 0).")
    max_steps: int = Field(0, ge=0, description="Optimizer steps to run; 0 means derive from epochs.")
    lr: float = Field(2e-5, gt=0, description="Peak learning rate (AdamW).")
    min_lr_ratio: float = Field(0.0, ge=0, le=1, description="Cosine decay floor as a fraction of lr.")
    warmup_ratio: float = Field(0.03, ge=0, lt=1, description="Fraction of the steps with linear warmup.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay (never on biases and norms).")
    adam_betas: tuple[float, float] = Field((0.9, 0.95), description="AdamW betas.")
    adam_eps: float = Field(1e-8, gt=0, description="AdamW epsilon.")
    max_grad_norm: float = Field(1.0, ge=0, description="Clip the global gradient norm to this; 0 disables.")
    micro_batch_tokens: int = Field(
        8192, gt=0, description="Token budget of one micro batch per rank (padding counts)."
    )
    grad_accum: int = Field(1, gt=0, description="Micro batches per rank per optimizer step.")
    max_seq_len: int = Field(2048, gt=1, description="Longest row (prompt + target + EOS) in tokens.")
    truncation: Literal["error", "truncate_left", "drop"] = Field(
        "error", description="Rows longer than max_seq_len: stop, cut tokens from the left, or drop them (counted)."
    )
    packing: bool = Field(True, description="Pack several rows into one sequence; attention never crosses rows.")
    gradient_checkpointing: bool = Field(True, description="Recompute activations in backward to save memory.")
    bf16: bool | Literal["auto"] = Field("auto", description="bf16 weights and compute; auto: on when training on GPU.")
    attn_implementation: str = Field(
        "sdpa",
        description="Attention kernel: sdpa, eager or flex_attention (rows kept apart by a block-diagonal mask), "
        "or a flash-attention kernel such as flash_attention_2 (each micro batch runs as one varlen sequence).",
    )
    eval_fraction: float = Field(0.05, ge=0, lt=1, description="Share of rows held out for the eval loss.")
    eval_every: int = Field(0, ge=0, description="Extra eval every N steps; eval also runs at checkpoints and the end.")
    save_every: int = Field(500, ge=0, description="Checkpoint every N steps and at the end (resume points); 0: never.")
    keep_last: int = Field(2, gt=0, description="Checkpoints kept; older ones are deleted.")
    resume: bool = Field(True, description="Continue from the newest checkpoint in run_dir/checkpoints if any.")
    lora: LoraConfig | None = Field(None, description="LoRA adapters via peft; null trains every parameter.")
    merge_lora: bool = Field(True, description="LoRA: export the base model with the adapter merged into model/.")
    export_dtype: Literal["bfloat16", "float16", "float32"] = Field(
        "bfloat16", description="dtype of the exported model/ weights."
    )
    export_shard_size: str = Field("5GB", description="Largest safetensors shard of the exported model.")
    launcher: Literal["ray", "torchrun", "local"] = Field(
        "ray", description="ray: Ray Train workers; torchrun: torchrun ranks; local: this process, one rank."
    )
    num_workers: int = Field(1, gt=0, description="Ranks (one per GPU on GPU machines).")
    collective_timeout_s: int = Field(
        7200, gt=0, description="Seconds a rank waits in any collective or barrier before the job fails (every "
        "process group, both launchers); long because ranks wait while rank 0 writes the exported model.",
    )
    use_gpu: bool | Literal["auto"] = Field("auto", description="Train on GPUs; auto: when CUDA is available.")
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = Field(
        "PACK", description="launcher ray: how ranks spread over nodes (Ray placement strategy); PACK fills a node first."
    )
    peak_tflops: float | None = Field(
        None, gt=0, description="Per-device peak TFLOP/s for the MFU estimate; default: known GPUs, none on CPU."
    )
    report_to: list[Literal["tensorboard", "jsonl", "wandb"]] = Field(
        default_factory=lambda: ["tensorboard", "jsonl"],
        description="Metric sinks, written by rank 0 under run_dir/logs; wandb needs `pip install wandb` (and a login, "
        "or WANDB_MODE=offline).",
    )
    wandb_project: str | None = Field(None, description="W&B project; default: $WANDB_PROJECT, else s3ft.")
    wandb_run_name: str | None = Field(
        None, description="W&B run name; default: $WANDB_NAME, else the run folder's name."
    )
    log_every: int = Field(1, gt=0, description="Log metrics every N steps.")
    seed: int = Field(0, description="Seed of the data order, the eval split, LoRA init and dropout.")

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        if self.micro_batch_tokens < self.max_seq_len:
            raise ValueError(
                f"micro_batch_tokens ({self.micro_batch_tokens}) must be at least max_seq_len ({self.max_seq_len})"
            )
        if not (self.attn_implementation in MASKED_ATTENTION or is_flash_attention(self.attn_implementation)):
            raise ValueError(
                f"attn_implementation '{self.attn_implementation}' cannot keep packed rows apart; use one of "
                f"{', '.join(MASKED_ATTENTION)} or a flash-attention kernel (flash_attention_2, flash_attention_3)"
            )
        if self.launcher == "local" and self.num_workers != 1:
            raise ValueError("launcher 'local' runs one rank; use ray or torchrun for num_workers > 1")
        return self
