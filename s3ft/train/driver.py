"""`train()`: check everything, tokenize once, start the ranks, return the exported model folder.

Tokenizing happens once per run: in the driver under Ray and the local launcher, and on rank 0 under
torchrun (the other ranks wait); the rows are written under output_dir, which every node shares, as
memory-mapped arrays that every rank opens without copying.

Every user mistake (missing model, empty or over-long rows, a DeepSpeed JSON that contradicts the
train section) is raised here, in the calling process, before any rank starts.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from s3ft.config.train import TrainConfig
from s3ft.errors import ConfigError, ModelError, S3FTError
from s3ft.train.spec import WorkerSpec, data_files

log = logging.getLogger(__name__)
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# Model types and layer types (parts of their names) with layers that carry state along the sequence
# (state-space, linear attention, short convolutions) instead of attending by position.
RECURRENT = ("mamba", "jamba", "zamba", "bamba", "falcon_h1", "nemotron_h", "lfm2", "qwen3_next", "minimax", "rwkv",
             "xlstm", "recurrent", "hybrid", "linear_attention", "conv", "ssm")


def train(run_dir: Path, model_path: str, cfg: TrainConfig, *, data_path: Path | None = None) -> Path:
    """Fine-tune `model_path` on the merged rows of `run_dir` (or `data_path`); returns run_dir/model.

    With LoRA and `merge_lora: false` it returns run_dir/adapter (peft format) and writes no model/.
    """
    from s3ft.train.launch import in_launched_rank, launch
    from s3ft.train.loop import run_worker

    run_dir = Path(run_dir).resolve()
    if in_launched_rank():  # under torchrun / the deepspeed launcher: this process is one rank
        run_worker(prepare_on_node(run_dir, model_path, cfg, data_path=data_path))
    else:
        launch(prepare(run_dir, model_path, cfg, data_path=data_path), cfg)
    if cfg.lora is not None and not cfg.merge_lora:
        return run_dir / "adapter"
    model_dir = run_dir / "model"
    if not (model_dir / "config.json").is_file():
        raise RuntimeError(f"training finished but {model_dir} was not written")
    return model_dir


@dataclass
class Settings:
    """What the checks found: the model, the devices and precision, the tokenizer, the rank count."""

    model_path: str
    use_gpu: bool
    bf16: bool
    hidden: int
    world: int
    tokenizer: Any

    def worker_spec(self, run_dir: Path, cfg: TrainConfig) -> WorkerSpec:
        return WorkerSpec(run_dir=str(run_dir), model_path=self.model_path, train=cfg.model_dump(mode="json"),
                          use_gpu=self.use_gpu, bf16=self.bf16, hidden_size=self.hidden)


def prepare(run_dir: Path, model_path: str, cfg: TrainConfig, *, data_path: Path | None = None) -> WorkerSpec:
    """check → tokenize → split → plan → check the checkpoint → write the rows for the ranks."""
    from s3ft.train.tokenize import split_eval, tokenize_rows

    settings = check_settings(model_path, cfg)
    source = Path(data_path) if data_path is not None else run_dir / "data" / "merged.jsonl"
    data, stats = tokenize_rows(settings.tokenizer, source, max_seq_len=cfg.max_seq_len, truncation=cfg.truncation)
    if stats.truncated or stats.dropped:
        log.warning("train: %d row(s) truncated, %d dropped (longer than %d tokens)", stats.truncated,
                    stats.dropped, cfg.max_seq_len)
    train_rows, eval_rows = split_eval(data, cfg.eval_fraction, cfg.seed)
    steps = plan(train_rows, cfg, settings.world)
    check_checkpoint(run_dir, cfg, steps, train_rows, settings.world)
    summary = summarise(stats, train_rows, eval_rows, steps, settings.world)
    write_prepared(run_dir, train_rows, eval_rows, summary, stats.dropped_ids)
    return settings.worker_spec(run_dir, cfg)


def prepare_on_node(run_dir: Path, model_path: str, cfg: TrainConfig, *, data_path: Path | None = None) -> WorkerSpec:
    """Under torchrun: rank 0 prepares (tokenizes once, writes the memory-mapped rows to the shared
    output_dir; one writer, as ranks on several nodes writing the same files would race), the other ranks
    wait in the process group, then check the settings only. A user error on any rank is raised on every
    rank, so all of them stop with the same message."""
    import torch.distributed as dist

    from s3ft.train import groups

    use_gpu = resolve_use_gpu(cfg)
    groups.start(use_gpu, cfg.collective_timeout_s)
    spec, error = None, None
    if int(os.environ.get("RANK", "0")) == 0:
        try:
            spec = prepare(run_dir, model_path, cfg, data_path=data_path)
        except S3FTError as exc:
            error = exc
    errors: list[S3FTError | None] = [None] * dist.get_world_size()
    dist.all_gather_object(errors, error)
    first = next((e for e in errors if e is not None), None)
    if first is not None:
        groups.stop()
        raise first
    return spec or check_settings(model_path, cfg).worker_spec(run_dir, cfg)


def check_settings(model_path: str, cfg: TrainConfig) -> Settings:
    """Every check that needs no data: model folder and config, devices, precision, packing, DeepSpeed JSON."""
    from transformers import AutoConfig, AutoTokenizer

    from s3ft.train.dsconfig import resolve_deepspeed_config

    model_path = check_model_path(model_path)
    use_gpu = resolve_use_gpu(cfg)
    bf16 = resolve_bf16(cfg, use_gpu)
    if "wandb" in cfg.report_to and importlib.util.find_spec("wandb") is None:
        raise ConfigError("train.report_to lists wandb, but the wandb package is not installed: pip install wandb, "
                          "or remove wandb from train.report_to")
    try:
        model_config = AutoConfig.from_pretrained(model_path)
        tokenizer = AutoTokenizer.from_pretrained(model_path)
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot load the model config or tokenizer from '{model_path}': {exc}") from None
    text_config = getattr(model_config, "text_config", None) or model_config
    hidden = getattr(text_config, "hidden_size", None) or 1024
    limit = getattr(text_config, "max_position_embeddings", None)
    if limit and cfg.max_seq_len > limit:
        raise ConfigError(f"train.max_seq_len={cfg.max_seq_len} exceeds the model's context ({limit} tokens)")
    check_packing(model_config, cfg)
    world = int(os.environ.get("WORLD_SIZE", cfg.num_workers)) if _in_rank() else cfg.num_workers
    resolve_deepspeed_config(cfg, world_size=world, bf16=bf16, hidden_size=hidden)  # raises on contradictions
    return Settings(model_path, use_gpu, bf16, int(hidden), world, tokenizer)


def plan(train_rows, cfg: TrainConfig, world: int) -> list:
    from s3ft.train.batching import plan_steps

    return plan_steps(train_rows, world_size=world, grad_accum=cfg.grad_accum, budget=cfg.micro_batch_tokens,
                      packing=cfg.packing, seed=cfg.seed, epochs=cfg.epochs, max_steps=cfg.max_steps)


def check_checkpoint(run_dir: Path, cfg: TrainConfig, steps: list, train_rows, world: int) -> None:
    """resume: refuse a checkpoint this run cannot continue, before any rank starts; else remove old ones."""
    from s3ft.train import checkpoint
    from s3ft.train.batching import plan_fingerprint

    if not cfg.resume:
        if (run_dir / "checkpoints").exists():
            log.warning("train.resume is false: removing the checkpoints of an earlier run in %s", run_dir)
            shutil.rmtree(run_dir / "checkpoints")
        return
    found = checkpoint.latest(run_dir / "checkpoints")
    if found is not None:
        checkpoint.check_resumable(found[2], world_size=world, fingerprint=plan_fingerprint(steps, train_rows),
                                   path=found[1])


def summarise(stats, train_rows, eval_rows, steps: list, world: int) -> dict:
    from s3ft.train.batching import padding_fraction

    return {
        "rows": stats.rows, "truncated": stats.truncated, "dropped": stats.dropped,
        "train_rows": len(train_rows), "eval_rows": len(eval_rows) if eval_rows else 0,
        "train_tokens": int(train_rows.lengths().sum()),
        "target_tokens": int((train_rows.lengths() - train_rows.prompt_lens).sum()),
        "ranks": world, "steps": len(steps), "padding_fraction": round(padding_fraction(train_rows, steps), 4),
    }


def write_prepared(run_dir: Path, train_rows, eval_rows, summary: dict, dropped_ids: list[str]) -> None:
    train_file, eval_file = data_files(run_dir)
    train_rows.save(train_file)
    if eval_rows is not None:
        eval_rows.save(eval_file)
    else:
        shutil.rmtree(eval_file, ignore_errors=True)
    (train_file.parent / "summary.json").write_text(json.dumps({**summary, "dropped_ids": dropped_ids}, indent=2))


def resolve_bf16(cfg: TrainConfig, use_gpu: bool) -> bool:
    """bf16 on GPUs that have it (auto); refused where there is none (CPU, V100, T4)."""
    if cfg.bf16 is False:
        return False
    if not use_gpu:
        if cfg.bf16 is True:
            raise ConfigError("train.bf16: true needs GPUs; on CPU s3ft trains in fp32 (set bf16: auto)")
        return False
    supported = bf16_supported()
    if cfg.bf16 is True and supported is False:
        import torch

        raise ConfigError(f"train.bf16: true, but this GPU ({torch.cuda.get_device_name()}) has no bf16 support "
                          "(it needs compute capability 8.0: A100, H100, L4 ...); set train.bf16: false to train in "
                          "fp32")
    return supported is not False


def bf16_supported() -> bool | None:
    """Whether this machine's GPU computes in bf16 natively; None when this process sees no GPU (a Ray driver:
    the ranks check again before loading weights)."""
    import torch

    if not torch.cuda.is_available():
        return None
    return torch.cuda.is_bf16_supported(including_emulation=False)


def check_packing(model_config, cfg: TrainConfig) -> None:
    """Packing keeps rows apart through position ids; models with recurrent (state-space) layers ignore them."""
    if not cfg.packing:
        return
    kinds = {str(getattr(model_config, "model_type", ""))}
    kinds |= {str(k) for k in (getattr(model_config, "layer_types", None) or getattr(model_config, "layers_block_type",
                                                                                          None) or [])}
    recurrent = sorted(k for k in kinds if any(word in k.lower() for word in RECURRENT))
    if recurrent:
        raise ConfigError(
            f"train.packing: the model has recurrent layers ({', '.join(recurrent)}) that ignore position ids, so "
            "packed rows would see each other; set train.packing: false"
        )


def check_model_path(model_path: str) -> str:
    """A local folder (made absolute: ranks may run elsewhere) or something that looks like a hub id."""
    path = Path(model_path).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelError(f"model path {path} has no config.json (not a Hugging Face model folder)")
        return str(path.resolve())
    if path.exists() or not HUB_ID.match(model_path) or model_path.startswith((".", "/", "~")):
        raise ModelError(f"model path '{model_path}' does not exist")
    return model_path


def resolve_use_gpu(cfg: TrainConfig) -> bool:
    import torch

    if cfg.use_gpu == "auto":
        return torch.cuda.is_available() if cfg.launcher != "ray" else _ray_has_gpus()
    if cfg.use_gpu and cfg.launcher != "ray" and not torch.cuda.is_available():
        raise ConfigError("train.use_gpu: true, but this machine has no CUDA device")
    return bool(cfg.use_gpu)


def _ray_has_gpus() -> bool:
    import torch

    try:
        import ray

        if ray.is_initialized():
            return ray.cluster_resources().get("GPU", 0) > 0
    except ImportError:
        pass
    return torch.cuda.is_available()


def _in_rank() -> bool:
    from s3ft.train.launch import in_launched_rank

    return in_launched_rank()


def clean(run_dir: Path) -> None:
    """Remove everything training wrote (checkpoints, logs, prepared rows, model, adapter)."""
    for name in ("checkpoints", "logs", "train", "model", "adapter"):
        shutil.rmtree(Path(run_dir) / name, ignore_errors=True)
