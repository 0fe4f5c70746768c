"""The training loop every rank runs: plan → model → DeepSpeed engine → steps → checkpoints → export.

The loss of a step is the mean NLL over all target tokens of the step on all ranks. Each micro
batch's summed NLL is scaled by `ranks * grad_accum / step_target_tokens`, which DeepSpeed's
`/ grad_accum` and its mean over ranks turn into exactly that mean — so one rank with grad_accum
2 and two ranks with grad_accum 1 take the same step. Dropout is seeded by (step, micro batch), so
that holds with dropout too, and a resumed run draws the masks the uninterrupted one drew.
"""

from __future__ import annotations

import os
import shutil
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from s3ft.config.train import TrainConfig, is_flash_attention
from s3ft.train import checkpoint
from s3ft.train.batching import Step, collate, flatten, plan_fingerprint, plan_steps
from s3ft.train.tokenize import TokenizedSet

CRASH_ENV = "S3FT_TRAIN_CRASH_AFTER_STEP"  # tests: die (like a killed job) right after this step


@dataclass
class WorkerSpec:
    """Everything a rank needs, small and picklable (Ray ships it; torchrun reads it from JSON)."""

    run_dir: str
    model_path: str
    train: dict[str, Any]  # TrainConfig as JSON
    use_gpu: bool
    bf16: bool
    hidden_size: int

    @property
    def cfg(self) -> TrainConfig:
        return TrainConfig.model_validate(self.train)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def data_files(run_dir: Path) -> tuple[Path, Path]:
    return run_dir / "train" / "train_rows.npz", run_dir / "train" / "eval_rows.npz"


def run_worker(spec: WorkerSpec) -> None:
    import deepspeed
    import deepspeed.comm as dist

    warnings.filterwarnings("ignore", message=r".*torch\.distributed\.\w+` is deprecated", category=FutureWarning)

    cfg, run_dir = spec.cfg, Path(spec.run_dir)
    if spec.use_gpu:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    owns_group = not torch.distributed.is_initialized()  # Ray Train sets the group up itself
    deepspeed.init_distributed(dist_backend="nccl" if spec.use_gpu else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    dist.barrier()  # under torchrun, rank 0 wrote the tokenized rows just before
    _record_ranks(run_dir, rank, world)
    device = torch.device("cuda", torch.cuda.current_device()) if spec.use_gpu else torch.device("cpu")
    try:
        _train(spec, cfg, run_dir, rank, world, device)
    finally:
        if owns_group:
            torch.distributed.destroy_process_group()
            _forget_deepspeed_groups()


def _record_ranks(run_dir: Path, rank: int, world: int) -> None:
    """Rank 0 writes where every rank runs (gathered over the process group itself, so the file also
    shows the rendezvous reached every rank's address) to logs/placement/train.json."""
    from s3ft.runtime.placement import here, record

    mine = here() | {"rank": rank, "master": f"{os.environ.get('MASTER_ADDR')}:{os.environ.get('MASTER_PORT')}"}
    everyone: list[dict | None] = [None] * world
    torch.distributed.all_gather_object(everyone, mine)
    if rank == 0:
        record(run_dir, "train", [e for e in everyone if e is not None])


def _forget_deepspeed_groups() -> None:
    """DeepSpeed caches sub-groups of the world group; drop them with it so a later run in this process
    (local launcher, notebooks, tests) builds fresh ones instead of using destroyed ones."""
    from deepspeed.utils import groups

    for name in ("_WORLD_GROUP", "_ZERO_PARAM_INTRA_PARALLEL_GROUP", "_TENSOR_MODEL_PARALLEL_GROUP",
                 "_MODEL_PARALLEL_GROUP", "_DATA_PARALLEL_GROUP"):
        if hasattr(groups, name):
            setattr(groups, name, None)
    for name in ("_EXPERT_PARALLEL_GROUP", "_EXPERT_PARALLEL_GROUP_RANKS", "_EXPERT_DATA_PARALLEL_GROUP",
                 "_EXPERT_DATA_PARALLEL_GROUP_RANKS", "_ALL_TO_ALL_GROUP"):
        if isinstance(getattr(groups, name, None), dict):
            getattr(groups, name).clear()


def _train(spec: WorkerSpec, cfg: TrainConfig, run_dir: Path, rank: int, world: int, device: torch.device) -> None:
    import deepspeed.comm as dist
    from transformers import AutoTokenizer

    from s3ft.train import metrics
    from s3ft.train.model import nll_sum

    train_file, eval_file = data_files(run_dir)
    data = TokenizedSet.load(train_file)
    eval_data = TokenizedSet.load(eval_file) if eval_file.is_file() else None
    steps = plan_steps(data, world_size=world, grad_accum=cfg.grad_accum, budget=cfg.micro_batch_tokens,
                       packing=cfg.packing, seed=cfg.seed, epochs=cfg.epochs, max_steps=cfg.max_steps)
    fingerprint = plan_fingerprint(steps, data)
    tokenizer = AutoTokenizer.from_pretrained(spec.model_path)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    engine, scheduler, zero3_handle, n_params = _build_engine(spec, cfg, world, len(steps))

    ckpt_root, start = run_dir / "checkpoints", 0
    found = checkpoint.latest(ckpt_root) if cfg.resume else None
    if found is not None:
        start, path, meta = found
        checkpoint.check_resumable(meta, world_size=world, fingerprint=fingerprint, path=path)
        checkpoint.load(engine, path, rank=rank)
    meta = {"world_size": world, "plan": fingerprint, "total_steps": len(steps)}

    reporter = metrics.Reporter(run_dir / "logs", enabled=rank == 0, cfg=cfg, total_steps=len(steps),
                                start_step=start)
    mcfg = engine.module.config
    attn_dim = getattr(mcfg, "num_attention_heads", 0) * getattr(mcfg, "head_dim", 0) or getattr(mcfg, "hidden_size", 0)
    peak = metrics.peak_tflops(cfg.peak_tflops, spec.use_gpu)
    crash_at = int(os.environ.get(CRASH_ENV, "0"))
    lengths = data.lengths()
    if rank == 0:
        print(f"train: {len(data)} rows ({len(eval_data) if eval_data else 0} held out), {len(steps)} steps from "
              f"step {start}, {world} rank(s), {'packed' if cfg.packing else 'padded'} micro batches of "
              f"<= {cfg.micro_batch_tokens} tokens, {n_params / 1e6:.1f}M parameters", flush=True)
    engine.train()
    try:
        for index in range(start, len(steps)):
            step, number = steps[index], index + 1
            t0 = time.perf_counter()
            lr = scheduler.get_last_lr()[0]
            loss_sum = torch.zeros((), dtype=torch.float64, device=device)
            for k, mb in enumerate(step.for_rank(rank, world)):
                torch.manual_seed(_dropout_seed(cfg.seed, number, rank + k * world))
                batch = micro_batch_tensors(data, mb, cfg, pad_id, device)
                nll = nll_sum(engine, batch)
                loss_sum += nll.detach().double()
                engine.backward(nll * (world * cfg.grad_accum) / step.target_tokens)
                engine.step()
            dist.all_reduce(loss_sum)
            elapsed = time.perf_counter() - t0
            row_lens = lengths[step.rows()]
            tokens = int(row_lens.sum())
            values = {"loss": loss_sum.item() / step.target_tokens, "lr": lr,
                      "grad_norm": _float(engine.get_global_grad_norm()),
                      "tokens_per_s": tokens / elapsed, "tokens": tokens, "target_tokens": step.target_tokens,
                      "step_time": elapsed, "epoch": step.epoch}
            if peak:
                flops = metrics.train_flops(n_params, tokens, int((row_lens.astype("int64") ** 2).sum()),
                                            getattr(mcfg, "num_hidden_layers", 0), attn_dim)
                values["mfu"] = flops / elapsed / (peak * 1e12 * world)
            logged = number % cfg.log_every == 0 or number == len(steps)
            reporter.step(number, values if logged else None, [data.ids[i] for i in step.rows()])
            saving = bool(cfg.save_every) and (number % cfg.save_every == 0 or number == len(steps))
            evaluating = number == len(steps) or saving or (cfg.eval_every and number % cfg.eval_every == 0)
            if eval_data is not None and evaluating:
                reporter.eval(number, _evaluate(engine, eval_data, cfg, rank, world, pad_id, device))
            if saving:
                checkpoint.save(engine, ckpt_root, number, meta, rank=rank, keep_last=cfg.keep_last)
            if crash_at == number:
                os._exit(17)
    finally:
        reporter.close()

    _export(engine, spec, cfg, tokenizer, run_dir, rank)
    del zero3_handle
    engine.destroy()


def _build_engine(spec: WorkerSpec, cfg: TrainConfig, world: int, total_steps: int):
    """(engine, lr scheduler, ZeRO-3 handle to keep alive, parameter count): model, AdamW, cosine schedule."""
    import deepspeed

    from s3ft.train.dsconfig import resolve_deepspeed_config
    from s3ft.train.model import build_optimizer, count_parameters, load_model, lr_lambda, param_groups

    ds_config = resolve_deepspeed_config(cfg, world_size=world, bf16=spec.bf16, hidden_size=spec.hidden_size)
    torch.manual_seed(cfg.seed)
    model, zero3_handle = load_model(spec.model_path, cfg, ds_config, torch.bfloat16 if spec.bf16 else torch.float32)
    n_params = count_parameters(model)
    groups = param_groups(model, cfg.weight_decay)
    optimizer = None if "optimizer" in ds_config else build_optimizer(groups, cfg, spec.use_gpu)
    schedule = lr_lambda(total_steps, cfg.warmup_ratio, cfg.min_lr_ratio)
    engine, _, _, scheduler = deepspeed.initialize(
        model=model, optimizer=optimizer, model_parameters=groups if optimizer is None else None,
        lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, schedule), config=ds_config,
    )
    return engine, scheduler, zero3_handle, n_params


def _export(engine, spec: WorkerSpec, cfg: TrainConfig, tokenizer, run_dir: Path, rank: int) -> None:
    import deepspeed.comm as dist

    from s3ft.train import export

    model_dir = run_dir / "model"
    if cfg.lora is None:
        state = export.consolidated_state_dict(engine)
        if rank == 0:
            export.write_hf_folder(engine.module, state, tokenizer, model_dir, dtype=cfg.export_dtype,
                                   max_shard_size=cfg.export_shard_size)
    else:
        from s3ft.train import lora

        state = lora.gathered_adapter_state(engine.module)
        if rank == 0:
            adapter_dir = lora.save_adapter(engine.module, state, run_dir / "adapter")
            tokenizer.save_pretrained(adapter_dir)
            if not cfg.merge_lora:
                shutil.rmtree(run_dir / "model", ignore_errors=True)  # never leave an older model/ behind
            else:
                merged = lora.merge_adapter(spec.model_path, adapter_dir, export.DTYPES[cfg.export_dtype])
                export.write_hf_folder(merged, None, tokenizer, model_dir, dtype=cfg.export_dtype,
                                       max_shard_size=cfg.export_shard_size)
    dist.barrier()


def _evaluate(engine, data: TokenizedSet, cfg: TrainConfig, rank: int, world: int, pad_id: int, device) -> dict:
    """Mean target-token NLL on the held-out rows; every rank runs the same number of forwards."""
    import deepspeed.comm as dist

    from s3ft.train.batching import epoch_micro_batches
    from s3ft.train.model import nll_sum

    mbs = epoch_micro_batches(data, 0, cfg.seed, cfg.micro_batch_tokens, cfg.packing)
    mbs += [()] * (-len(mbs) % world)
    totals = torch.zeros(2, dtype=torch.float64, device=device)
    engine.eval()
    with torch.no_grad():
        for mb in mbs[rank::world]:
            batch = micro_batch_tensors(data, mb, cfg, pad_id, device)
            totals[0] += nll_sum(engine, batch).double()
            totals[1] += int((batch["labels"] != -100).sum())
    engine.train()
    dist.all_reduce(totals)
    loss = (totals[0] / totals[1].clamp(min=1)).item()
    return {"loss": loss, "perplexity": float(torch.exp(torch.tensor(min(loss, 50.0))))}


def micro_batch_tensors(data: TokenizedSet, mb, cfg: TrainConfig, pad_id: int, device: torch.device) -> dict:
    """The collated micro batch on `device`, as one sequence for flash-attention kernels (see `flatten`)."""
    batch = collate(data, mb, pad_id=pad_id)
    return _to(flatten(batch) if is_flash_attention(cfg.attn_implementation) else batch, device)


def _dropout_seed(seed: int, step: int, micro_batch: int) -> int:
    """Dropout masks depend on (seed, step, micro batch) only: the same on any rank layout, after a resume."""
    return (seed * 1_000_003 + step * 4_099 + micro_batch) % 2**63


def _to(batch: dict, device: torch.device) -> dict:
    return {k: (v.to(device, non_blocking=True) if v is not None else None) for k, v in batch.items()}


def _float(x) -> float | None:
    return None if x is None else float(x)


__all__ = ["CRASH_ENV", "Step", "WorkerSpec", "data_files", "run_worker"]
