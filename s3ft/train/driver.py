"""`train()`: check everything, tokenize once, start the ranks, return the exported model folder.

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
from pathlib import Path

from s3ft.config.train import TrainConfig
from s3ft.errors import ConfigError, ModelError
from s3ft.train.loop import WorkerSpec, data_files

log = logging.getLogger(__name__)
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def train(run_dir: Path, model_path: str, cfg: TrainConfig, *, data_path: Path | None = None) -> Path:
    """Fine-tune `model_path` on the merged rows of `run_dir` (or `data_path`); returns run_dir/model.

    With LoRA and `merge_lora: false` it returns run_dir/adapter (peft format) and writes no model/.
    """
    from s3ft.train.launch import in_launched_rank, launch
    from s3ft.train.loop import run_worker

    run_dir = Path(run_dir).resolve()
    spec = prepare(run_dir, model_path, cfg, data_path=data_path)
    if in_launched_rank():  # under torchrun / the deepspeed launcher: this process is one rank
        run_worker(spec)
    else:
        launch(spec, cfg)
    if cfg.lora is not None and not cfg.merge_lora:
        return run_dir / "adapter"
    model_dir = run_dir / "model"
    if not (model_dir / "config.json").is_file():
        raise RuntimeError(f"training finished but {model_dir} was not written")
    return model_dir


def prepare(run_dir: Path, model_path: str, cfg: TrainConfig, *, data_path: Path | None = None) -> WorkerSpec:
    """Validate, tokenize and split the rows, write them for the ranks; returns what each rank needs."""
    from transformers import AutoConfig, AutoTokenizer

    from s3ft.train.batching import padding_fraction, plan_steps
    from s3ft.train.dsconfig import resolve_deepspeed_config
    from s3ft.train.tokenize import split_eval, tokenize_rows

    model_path = check_model_path(model_path)
    use_gpu = resolve_use_gpu(cfg)
    bf16 = use_gpu if cfg.bf16 == "auto" else bool(cfg.bf16)
    if bf16 and not use_gpu:
        raise ConfigError("train.bf16: true needs GPUs; on CPU s3ft trains in fp32 (set bf16: auto)")
    if "wandb" in cfg.report_to and importlib.util.find_spec("wandb") is None:
        raise ConfigError("train.report_to lists wandb, but the wandb package is not installed: pip install wandb, "
                          "or remove wandb from train.report_to")
    try:
        model_config = AutoConfig.from_pretrained(model_path)
        tokenizer = AutoTokenizer.from_pretrained(model_path)
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot load the model config or tokenizer from '{model_path}': {exc}") from None
    hidden = getattr(model_config, "hidden_size", None) or getattr(getattr(model_config, "text_config", None),
                                                                    "hidden_size", 1024)
    limit = getattr(model_config, "max_position_embeddings", None)
    if limit and cfg.max_seq_len > limit:
        raise ConfigError(f"train.max_seq_len={cfg.max_seq_len} exceeds the model's context ({limit} tokens)")
    world = int(os.environ.get("WORLD_SIZE", cfg.num_workers)) if _in_rank() else cfg.num_workers
    resolve_deepspeed_config(cfg, world_size=world, bf16=bf16, hidden_size=hidden)  # raises on contradictions

    source = Path(data_path) if data_path is not None else run_dir / "data" / "merged.jsonl"
    data, stats = tokenize_rows(tokenizer, source, max_seq_len=cfg.max_seq_len, truncation=cfg.truncation)
    train_rows, eval_rows = split_eval(data, cfg.eval_fraction, cfg.seed)
    steps = plan_steps(train_rows, world_size=world, grad_accum=cfg.grad_accum, budget=cfg.micro_batch_tokens,
                       packing=cfg.packing, seed=cfg.seed, epochs=cfg.epochs, max_steps=cfg.max_steps)
    summary = {
        "rows": stats.rows, "truncated": stats.truncated, "dropped": stats.dropped,
        "train_rows": len(train_rows), "eval_rows": len(eval_rows) if eval_rows else 0,
        "train_tokens": int(train_rows.lengths().sum()),
        "target_tokens": int((train_rows.lengths() - train_rows.prompt_lens).sum()),
        "ranks": world, "steps": len(steps), "padding_fraction": round(padding_fraction(train_rows, steps), 4),
    }
    first_rank = not _in_rank() or int(os.environ.get("RANK", "0")) == 0
    if not cfg.resume and first_rank and (run_dir / "checkpoints").exists():
        log.warning("train.resume is false: removing the checkpoints of an earlier run in %s", run_dir)
        shutil.rmtree(run_dir / "checkpoints")
    if cfg.resume:  # refuse a checkpoint this run cannot continue, before any rank starts
        from s3ft.train import checkpoint
        from s3ft.train.batching import plan_fingerprint

        found = checkpoint.latest(run_dir / "checkpoints")
        if found is not None:
            checkpoint.check_resumable(found[2], world_size=world, fingerprint=plan_fingerprint(steps, train_rows),
                                       path=found[1])
    if stats.truncated or stats.dropped:
        log.warning("train: %d row(s) truncated, %d dropped (longer than %d tokens)", stats.truncated,
                    stats.dropped, cfg.max_seq_len)
    if first_rank:
        _write_prepared(run_dir, train_rows, eval_rows, summary, stats.dropped_ids)
    return WorkerSpec(run_dir=str(run_dir), model_path=model_path, train=cfg.model_dump(mode="json"),
                      use_gpu=use_gpu, bf16=bf16, hidden_size=int(hidden))


def _write_prepared(run_dir: Path, train_rows, eval_rows, summary: dict, dropped_ids: list[str]) -> None:
    train_file, eval_file = data_files(run_dir)
    train_rows.save(train_file)
    if eval_rows is not None:
        eval_rows.save(eval_file)
    else:
        eval_file.unlink(missing_ok=True)
    (train_file.parent / "summary.json").write_text(json.dumps({**summary, "dropped_ids": dropped_ids}, indent=2))


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
