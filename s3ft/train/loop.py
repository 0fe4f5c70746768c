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
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from s3ft.config.train import TrainConfig, is_flash_attention
from s3ft.train import checkpoint
from s3ft.train.batching import IGNORE, Step, collate, flatten, plan_fingerprint, plan_steps
from s3ft.train.spec import WorkerSpec, data_files
from s3ft.train.tokenize import TokenizedSet

CRASH_ENV = "S3FT_TRAIN_CRASH_AFTER_STEP"  # tests: die (like a killed job) right after this step


def run_worker(spec: WorkerSpec) -> None:
    import deepspeed.comm as dist

    from s3ft.train import groups

    warnings.filterwarnings("ignore", message=r".*torch\.distributed\.\w+` is deprecated", category=FutureWarning)

    cfg, run_dir = spec.cfg, Path(spec.run_dir)
    groups.start(spec.use_gpu, cfg.collective_timeout_s)
    try:
        check_device(spec)
        rank, world = dist.get_rank(), dist.get_world_size()
        dist.barrier()  # the rows were written just before (by the driver, or rank 0 under torchrun)
        _record_ranks(run_dir, rank, world)
        device = torch.device("cuda", torch.cuda.current_device()) if spec.use_gpu else torch.device("cpu")
        _train(spec, cfg, run_dir, rank, world, device)
    finally:
        groups.release()


def _record_ranks(run_dir: Path, rank: int, world: int) -> None:
    """Rank 0 writes where every rank runs (gathered over the process group itself, so the file also
    shows the rendezvous reached every rank's address) to logs/placement/train.json."""
    from s3ft.runtime.placement import here, record

    mine = here() | {"rank": rank, "master": f"{os.environ.get('MASTER_ADDR')}:{os.environ.get('MASTER_PORT')}"}
    everyone: list[dict | None] = [None] * world
    torch.distributed.all_gather_object(everyone, mine)
    if rank == 0:
        record(run_dir, "train", [e for e in everyone if e is not None])


def check_device(spec: WorkerSpec) -> None:
    """bf16 needs a GPU that has it: checked here too, for drivers (Ray) that see no GPU themselves."""
    if spec.bf16 and spec.use_gpu and not torch.cuda.is_bf16_supported(including_emulation=False):
        from s3ft.errors import ConfigError

        raise ConfigError(f"train.bf16 is on, but this GPU ({torch.cuda.get_device_name()}) has no bf16 support "
                          "(it needs compute capability 8.0: A100, H100, L4 ...); set train.bf16: false to train in "
                          "fp32")


@dataclass
class Session:
    """What the phases of a rank's run share: settings, data, plan, engine, and where it starts."""

    spec: WorkerSpec
    cfg: TrainConfig
    run_dir: Path
    rank: int
    world: int
    device: torch.device
    data: TokenizedSet
    eval_data: TokenizedSet | None
    steps: list[Step]
    tokenizer: Any
    pad_id: int
    engine: Any
    scheduler: Any
    zero3_handle: Any
    flops: Any  # metrics.FlopCounts
    start: int  # steps already done (resume)
    meta: dict[str, Any]


def _train(spec: WorkerSpec, cfg: TrainConfig, run_dir: Path, rank: int, world: int, device: torch.device) -> None:
    """setup → train → export → cleanup."""
    session = _setup(spec, cfg, run_dir, rank, world, device)
    _run_steps(session)
    _export(session.engine, spec, cfg, session.tokenizer, run_dir, rank)
    del session.zero3_handle
    session.engine.destroy()


def _setup(spec: WorkerSpec, cfg: TrainConfig, run_dir: Path, rank: int, world: int, device: torch.device) -> Session:
    """The prepared rows, the plan, the tokenizer, the engine, and the checkpoint to continue from."""
    from transformers import AutoTokenizer

    from s3ft.train import groups, metrics
    from s3ft.train.model import count_parameters

    train_file, eval_file = data_files(run_dir)
    data = TokenizedSet.load(train_file)
    eval_data = TokenizedSet.load(eval_file) if eval_file.is_dir() else None
    steps = plan_steps(data, world_size=world, grad_accum=cfg.grad_accum, budget=cfg.micro_batch_tokens,
                       packing=cfg.packing, seed=cfg.seed, epochs=cfg.epochs, max_steps=cfg.max_steps)
    fingerprint = plan_fingerprint(steps, data)
    tokenizer = AutoTokenizer.from_pretrained(spec.model_path)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    engine, scheduler, zero3_handle = _build_engine(spec, cfg, world, len(steps))
    n_groups = groups.apply_timeout(cfg.collective_timeout_s)  # DeepSpeed's own groups too
    start = 0
    found = checkpoint.latest(run_dir / "checkpoints") if cfg.resume else None
    if found is not None:
        start, path, meta = found
        checkpoint.check_resumable(meta, world_size=world, fingerprint=fingerprint, path=path)
        checkpoint.load(engine, path, rank=rank)
    flops = metrics.flop_counts(engine.module)
    if rank == 0:
        n_params = count_parameters(engine.module)
        # Written, not print()ed: under Ray Train, print() goes to its logger and to the stream both, so the
        # line reached the console twice. On stderr, beside the bar: Ray forwards each stream on its own, so
        # only one stream keeps the two in order.
        sys.stderr.write(f"train: {len(data)} rows ({len(eval_data) if eval_data else 0} held out), {len(steps)} "
                         f"steps from step {start}, {world} rank(s), {'packed' if cfg.packing else 'padded'} micro "
                         f"batches of <= {cfg.micro_batch_tokens} tokens, {n_params / 1e6:.1f}M parameters, "
                         f"collective timeout {cfg.collective_timeout_s} s on {n_groups} process group(s)\n")
        sys.stderr.flush()
    return Session(spec, cfg, run_dir, rank, world, device, data, eval_data, steps, tokenizer, pad_id, engine,
                   scheduler, zero3_handle, flops, start,
                   {"world_size": world, "plan": fingerprint, "total_steps": len(steps)})


def _run_steps(s: Session) -> None:
    """Every remaining step: micro batches, the logged metrics, evals and checkpoints."""
    from s3ft.train import metrics

    cfg, total = s.cfg, len(s.steps)
    reporter = metrics.Reporter(s.run_dir / "logs", enabled=s.rank == 0, cfg=cfg, total_steps=total,
                                start_step=s.start)
    peak = metrics.peak_tflops(cfg.peak_tflops, s.spec.use_gpu)
    crash_at = int(os.environ.get(CRASH_ENV, "0"))
    s.engine.train()
    try:
        for index in range(s.start, total):
            step, number = s.steps[index], index + 1
            values = _train_step(s, step, number, peak)
            logged = number % cfg.log_every == 0 or number == total
            reporter.step(number, values if logged else None, [s.data.ids[i] for i in step.rows()])
            saving = bool(cfg.save_every) and (number % cfg.save_every == 0 or number == total)
            evaluating = number == total or saving or (cfg.eval_every and number % cfg.eval_every == 0)
            if s.eval_data is not None and evaluating:
                reporter.eval(number, _evaluate(s.engine, s.eval_data, cfg, s.rank, s.world, s.pad_id, s.device))
            if saving:
                checkpoint.save(s.engine, s.run_dir / "checkpoints", number, s.meta, rank=s.rank,
                                keep_last=cfg.keep_last)
            if crash_at == number:
                os._exit(17)
    finally:
        reporter.close()


def _train_step(s: Session, step: Step, number: int, peak: float | None) -> dict[str, Any]:
    """One optimizer step on this rank's micro batches; returns the step's metrics (the same on every rank)."""
    import deepspeed.comm as dist

    from s3ft.train.loss import nll_sum

    cfg, world = s.cfg, s.world
    t0 = time.perf_counter()
    lr = s.scheduler.get_last_lr()[0]
    loss_sum = torch.zeros((), dtype=torch.float64, device=s.device)
    for k, mb in enumerate(step.for_rank(s.rank, world)):
        torch.manual_seed(_dropout_seed(cfg.seed, number, s.rank + k * world))
        batch = micro_batch_tensors(s.data, mb, cfg, s.pad_id, s.device)
        nll = nll_sum(s.engine, batch)
        loss_sum += nll.detach().double()
        s.engine.backward(nll * (world * cfg.grad_accum) / step.target_tokens)
        s.engine.step()
    dist.all_reduce(loss_sum)
    if s.device.type == "cuda":
        torch.cuda.synchronize(s.device)  # kernels run ahead of the host: time the work, not its launch
    elapsed = time.perf_counter() - t0
    row_lens = s.data.lengths()[step.rows()].astype("int64")
    tokens = int(row_lens.sum())
    values = {"loss": loss_sum.item() / step.target_tokens, "lr": lr,
              "grad_norm": _float(s.engine.get_global_grad_norm()), "tokens_per_s": tokens / elapsed,
              "tokens": tokens, "target_tokens": step.target_tokens, "step_time": elapsed, "epoch": step.epoch}
    if peak:
        flops = s.flops.step(tokens, step.target_tokens, int((row_lens**2).sum()))
        values["mfu"] = flops / elapsed / (peak * 1e12 * world)
    return values


def _build_engine(spec: WorkerSpec, cfg: TrainConfig, world: int, total_steps: int):
    """(engine, lr scheduler, ZeRO-3 handle to keep alive): model, AdamW, cosine schedule."""
    import deepspeed

    from s3ft.train.dsconfig import resolve_deepspeed_config
    from s3ft.train.model import build_optimizer, load_model, lr_lambda, param_groups

    ds_config = resolve_deepspeed_config(cfg, world_size=world, bf16=spec.bf16, hidden_size=spec.hidden_size)
    torch.manual_seed(cfg.seed)
    model, zero3_handle = load_model(spec.model_path, cfg, ds_config, torch.bfloat16 if spec.bf16 else torch.float32)
    groups = param_groups(model, cfg.weight_decay)
    optimizer = None if "optimizer" in ds_config else build_optimizer(groups, cfg, spec.use_gpu)
    schedule = lr_lambda(total_steps, cfg.warmup_ratio, cfg.min_lr_ratio)
    engine, _, _, scheduler = deepspeed.initialize(
        model=model, optimizer=optimizer, model_parameters=groups if optimizer is None else None,
        lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, schedule), config=ds_config,
    )
    return engine, scheduler, zero3_handle


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
    from s3ft.train.loss import nll_sum

    mbs = epoch_micro_batches(data, 0, cfg.seed, cfg.micro_batch_tokens, cfg.packing)
    mbs += [()] * (-len(mbs) % world)
    totals = torch.zeros(2, dtype=torch.float64, device=device)
    engine.eval()
    with torch.no_grad():
        for mb in mbs[rank::world]:
            batch = micro_batch_tensors(data, mb, cfg, pad_id, device)
            totals[0] += nll_sum(engine, batch).double()
            totals[1] += batch["labelled"].numel()
    engine.train()
    dist.all_reduce(totals)
    loss = (totals[0] / totals[1].clamp(min=1)).item()
    return {"loss": loss, "perplexity": float(torch.exp(torch.tensor(min(loss, 50.0))))}


def micro_batch_tensors(data: TokenizedSet, mb, cfg: TrainConfig, pad_id: int, device: torch.device) -> dict:
    """The collated micro batch on `device`, as one sequence for flash-attention kernels (see `flatten`), with the
    flat indices of its labelled positions (found here on the CPU, so the loss needs no host sync)."""
    batch = collate(data, mb, pad_id=pad_id)
    batch = flatten(batch) if is_flash_attention(cfg.attn_implementation) else batch
    batch["labelled"] = torch.nonzero(batch["labels"].reshape(-1) != IGNORE).flatten()
    return _to(batch, device)


def _dropout_seed(seed: int, step: int, micro_batch: int) -> int:
    """Dropout masks depend on (seed, step, micro batch) only: the same on any rank layout, after a resume."""
    return (seed * 1_000_003 + step * 4_099 + micro_batch) % 2**63


def _to(batch: dict, device: torch.device) -> dict:
    """Tensors to `device` (no host sync); plain values (flash's max lengths) stay Python ints."""
    return {k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}


def _float(x) -> float | None:
    return None if x is None else float(x)


__all__ = ["CRASH_ENV", "Step", "WorkerSpec", "data_files", "run_worker"]
