"""Process groups: one timeout (train.collective_timeout_s) for the world group and every group DeepSpeed adds.

The timeout is how long a rank waits in a collective or barrier before the job fails. It must be long:
while rank 0 writes the exported model (140 GB at 70B) the others wait in a barrier, and the defaults
(10 minutes for NCCL, 30 for gloo) would kill a healthy job. DeepSpeed creates its own groups (a clone
of the world for ZeRO) without a timeout, so after the engine exists every group gets the configured one.
"""

from __future__ import annotations

import os
from datetime import timedelta

import torch

_owned = False  # whether this process created the group (then `release` destroys it)


def start(use_gpu: bool, timeout_s: int) -> bool:
    """Join the job's process group (NCCL on GPU, gloo on CPU) unless this process is in it already (Ray Train
    creates it, with TorchConfig's timeout_s; under torchrun the driver joins before preparing the rows).
    True when this call created it."""
    import deepspeed

    global _owned
    if use_gpu:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    created = not torch.distributed.is_initialized()
    if not use_gpu:
        _skip_shm_op()
    deepspeed.init_distributed(dist_backend="nccl" if use_gpu else "gloo", timeout=timedelta(seconds=timeout_s))
    apply_timeout(timeout_s)
    _owned = _owned or created
    return created


def _skip_shm_op() -> None:
    """Keep DeepSpeed from loading its CPU shared-memory comm op as it joins the group: only its
    `inference_all_reduce` uses the op, never ZeRO training, and loading it costs a ~30 s compile on a new
    machine and a hang for ever after a rank dies mid-load. torch's JIT loader holds a lock file in
    ~/.cache/torch_extensions for every load, even of a built op, and a rank killed while it holds it
    (scancel, an out-of-memory kill, `ray stop`) leaves the file; every later run on that home waits on
    it. DeepSpeed has no switch for this: it asks its table of compatible ops, so the op is marked unusable."""
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


def release() -> None:
    """`stop` if this process created the group; a group Ray Train made is Ray's to end."""
    if _owned:
        stop()


def all_groups() -> list:
    """Every process group this rank belongs to (the world group first)."""
    from torch.distributed import distributed_c10d as c10d

    return list(c10d._world.pg_map)


def apply_timeout(timeout_s: int) -> int:
    """Set the timeout on every group; returns how many."""
    from torch.distributed import distributed_c10d as c10d

    groups = all_groups()
    for group in groups:
        c10d._set_pg_timeout(timedelta(seconds=timeout_s), group)
    return len(groups)


def timeouts() -> list[float]:
    """Each group's timeout in seconds, as its backend holds it (what a test can check)."""
    out = []
    for group in all_groups():
        for device in ("cuda", "cpu"):
            try:
                backend = group._get_backend(torch.device(device))
            except RuntimeError:
                continue
            out.append(backend.options._timeout.total_seconds())
            break
    return out


def stop() -> None:
    """Destroy the group and forget DeepSpeed's cached sub-groups, so a later run in this process (local
    launcher, notebooks, tests) builds fresh ones instead of using destroyed ones."""
    from deepspeed.utils import groups

    global _owned
    _owned = False
    torch.distributed.destroy_process_group()
    for name in ("_WORLD_GROUP", "_ZERO_PARAM_INTRA_PARALLEL_GROUP", "_TENSOR_MODEL_PARALLEL_GROUP",
                 "_MODEL_PARALLEL_GROUP", "_DATA_PARALLEL_GROUP"):
        if hasattr(groups, name):
            setattr(groups, name, None)
    for name in ("_EXPERT_PARALLEL_GROUP", "_EXPERT_PARALLEL_GROUP_RANKS", "_EXPERT_DATA_PARALLEL_GROUP",
                 "_EXPERT_DATA_PARALLEL_GROUP_RANKS", "_ALL_TO_ALL_GROUP"):
        if isinstance(getattr(groups, name, None), dict):
            getattr(groups, name).clear()
