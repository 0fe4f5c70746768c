"""Checkpoints under run_dir/checkpoints/step_NNNNNNNN: DeepSpeed state, per-rank RNG, and meta.json.

DeepSpeed saves model, optimizer and scheduler (each rank its own ZeRO partition); we add every
rank's RNG states and, written last by rank 0, `meta.json` with the step (the data position: the plan
is fixed, so step k means "the rows of steps 1..k are trained"). A folder without meta.json is an
interrupted save and is ignored, then deleted.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from s3ft.errors import ConfigError

PREFIX = "step_"


def tag_for(step: int) -> str:
    return f"{PREFIX}{step:08d}"


def _step_of(path: Path) -> int | None:
    try:
        return int(path.name[len(PREFIX):]) if path.name.startswith(PREFIX) else None
    except ValueError:
        return None


def complete_checkpoints(root: Path) -> list[tuple[int, Path]]:
    """(step, folder) of every finished checkpoint, oldest first."""
    if not root.is_dir():
        return []
    found = [(_step_of(p), p) for p in root.iterdir() if p.is_dir() and (p / "meta.json").is_file()]
    return sorted((s, p) for s, p in found if s is not None)


def latest(root: Path) -> tuple[int, Path, dict[str, Any]] | None:
    done = complete_checkpoints(root)
    if not done:
        return None
    step, path = done[-1]
    return step, path, json.loads((path / "meta.json").read_text())


def check_resumable(meta: dict[str, Any], *, world_size: int, fingerprint: str, path: Path) -> None:
    """Refuse a checkpoint this run cannot continue exactly; say what to do instead."""
    if meta["world_size"] != world_size:
        raise ConfigError(
            f"checkpoint {path} was written by {meta['world_size']} rank(s) but this run has {world_size}. "
            f"Resume with train.num_workers={meta['world_size']} (same GPUs per node), or start over with "
            "train.resume=false (or delete the checkpoints folder). Changing the rank count would also change "
            "which rows form each step."
        )
    if meta["plan"] != fingerprint:
        raise ConfigError(
            f"checkpoint {path} belongs to a different data plan (the merged rows, seed, epochs, "
            "micro_batch_tokens, grad_accum or packing changed). Restore those settings, or start over "
            "with train.resume=false."
        )


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def save(engine, root: Path, step: int, meta: dict[str, Any], *, rank: int, keep_last: int) -> Path:
    """Collective: every rank calls it. Returns the checkpoint folder."""
    import deepspeed.comm as dist

    tag = tag_for(step)
    engine.save_checkpoint(str(root), tag=tag, client_state={"s3ft_step": step})
    torch.save(rng_state(), root / tag / f"rng_rank{rank}.pt")
    dist.barrier()
    if rank == 0:
        tmp = root / tag / "meta.json.tmp"
        tmp.write_text(json.dumps({**meta, "step": step}, indent=2))
        tmp.replace(root / tag / "meta.json")
        _prune(root, keep_last)
    dist.barrier()
    return root / tag


def load(engine, path: Path, *, rank: int) -> None:
    load_path, _ = engine.load_checkpoint(str(path.parent), tag=path.name, load_optimizer_states=True,
                                          load_lr_scheduler_states=True)
    if load_path is None:
        raise RuntimeError(f"DeepSpeed could not load checkpoint {path}")
    rng = path / f"rng_rank{rank}.pt"
    if rng.is_file():
        set_rng_state(torch.load(rng, weights_only=False))


def _prune(root: Path, keep_last: int) -> None:
    done = complete_checkpoints(root)
    keep = {p for _, p in done[-keep_last:]}
    for p in root.iterdir():  # older checkpoints, and interrupted saves
        if p.is_dir() and _step_of(p) is not None and p not in keep:
            shutil.rmtree(p, ignore_errors=True)
