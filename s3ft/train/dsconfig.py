"""DeepSpeed JSON: find it, fill its "auto" values from the train section, refuse contradictions.

s3ft batches by tokens, so a DeepSpeed "micro batch" is one packed micro batch (size 1); the learning
rate schedule is ours (a DeepSpeed `scheduler` block would fight it). In bf16 with grad_accum > 1,
gradients are accumulated and reduced in fp32 unless the JSON says otherwise. Everything is checked in the
driver, before any rank starts.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from s3ft.config.train import TrainConfig
from s3ft.errors import ConfigError

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs" / "deepspeed"
AUTO = "auto"


def find_deepspeed_json(name: str) -> Path:
    """A path as given, else a bundled name (zero3, zero3_offload, zero2) from configs/deepspeed."""
    path = Path(name).expanduser()
    if path.is_file():
        return path
    bundled = CONFIG_DIR / (name if name.endswith(".json") else f"{name}.json")
    if bundled.is_file():
        return bundled
    known = ", ".join(sorted(p.stem for p in CONFIG_DIR.glob("*.json"))) or "none found"
    raise ConfigError(f"train.deepspeed: no file '{name}' (bundled configs: {known})")


def load_deepspeed_json(name: str) -> dict[str, Any]:
    path = find_deepspeed_json(name)
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"train.deepspeed: {path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"train.deepspeed: {path} must hold a JSON object")
    return data


class _Filler:
    def __init__(self, data: dict[str, Any], source: str):
        self.data, self.source, self.conflicts = data, source, []

    def _node(self, key: str, create: bool) -> tuple[dict[str, Any] | None, str]:
        *parents, leaf = key.split(".")
        node = self.data
        for part in parents:
            if part not in node:
                if not create:
                    return None, leaf
                node[part] = {}
            node = node[part]
        return node, leaf

    def match(self, key: str, ours: Any, our_key: str, *, create: bool = True) -> None:
        """Fill `key` when absent or "auto"; record a conflict when it is fixed to something else."""
        node, leaf = self._node(key, create)
        if node is None:
            return
        value = node.get(leaf, AUTO)
        if value == AUTO:
            node[leaf] = ours
        elif not _same(value, ours):
            self.conflicts.append(f"  {key} is {value!r} in {self.source}, but {our_key} gives {ours!r}")

    def default(self, key: str, ours: Any) -> None:
        """Set `key` when absent or "auto"; a value the JSON fixes is the user's choice."""
        node, leaf = self._node(key, create=True)
        if node.get(leaf, AUTO) == AUTO:
            node[leaf] = ours

    def fill(self, key: str, ours: Any) -> None:
        node, leaf = self._node(key, create=False)
        if node is not None and node.get(leaf) == AUTO:
            node[leaf] = ours


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return abs(a - b) <= 1e-12 * max(abs(a), abs(b), 1.0)
    return a == b


def resolve_deepspeed_config(cfg: TrainConfig, *, world_size: int, bf16: bool, hidden_size: int) -> dict[str, Any]:
    """The DeepSpeed config dict for this run; raises ConfigError listing every contradiction."""
    source = str(find_deepspeed_json(cfg.deepspeed))
    data = copy.deepcopy(load_deepspeed_json(cfg.deepspeed))
    if "scheduler" in data:
        raise ConfigError(
            f"train.deepspeed: {source} has a 'scheduler' block; s3ft owns the schedule "
            "(train.lr, train.warmup_ratio, train.min_lr_ratio) — remove the block"
        )
    if (data.get("fp16") or {}).get("enabled") not in (None, False, AUTO):
        raise ConfigError(f"train.deepspeed: {source} enables fp16; s3ft trains in bf16 (GPU) or fp32 — use bf16")
    data.setdefault("fp16", {})["enabled"] = False
    f = _Filler(data, source)
    f.match("train_micro_batch_size_per_gpu", 1, "packed micro batches (train.micro_batch_tokens)")
    f.match("gradient_accumulation_steps", cfg.grad_accum, "train.grad_accum")
    f.match("train_batch_size", world_size * cfg.grad_accum, "ranks x train.grad_accum")
    f.match("gradient_clipping", cfg.max_grad_norm, "train.max_grad_norm")
    f.match("bf16.enabled", bf16, "train.bf16 (resolved)")
    if "optimizer" in data:
        f.match("optimizer.params.lr", cfg.lr, "train.lr")
        f.match("optimizer.params.betas", list(cfg.adam_betas), "train.adam_betas")
        f.match("optimizer.params.eps", cfg.adam_eps, "train.adam_eps")
        f.match("optimizer.params.weight_decay", cfg.weight_decay, "train.weight_decay")
    if bf16 and cfg.grad_accum > 1:  # bf16 sums of micro batches lose the small gradients: add and reduce in fp32
        f.default("data_types.grad_accum_dtype", "fp32")
        f.default("communication_data_type", "fp32")
    f.fill("zero_optimization.reduce_bucket_size", hidden_size * hidden_size)
    f.fill("zero_optimization.stage3_prefetch_bucket_size", int(0.9 * hidden_size * hidden_size))
    f.fill("zero_optimization.stage3_param_persistence_threshold", 10 * hidden_size)
    if f.conflicts:
        raise ConfigError(
            "train.deepspeed contradicts the train section:\n" + "\n".join(f.conflicts)
            + "\nSet these DeepSpeed values to \"auto\" (s3ft fills them) or change the train section."
        )
    leftover = [k for k, v in _flatten(data) if v == AUTO]
    if leftover:
        raise ConfigError(f"train.deepspeed: s3ft cannot fill 'auto' for {', '.join(leftover)} in {source}")
    return data


def zero_stage(ds_config: dict[str, Any]) -> int:
    return int((ds_config.get("zero_optimization") or {}).get("stage", 0))


def _flatten(data: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    out = []
    for key, value in data.items():
        if isinstance(value, dict):
            out.extend(_flatten(value, f"{prefix}{key}."))
        else:
            out.append((f"{prefix}{key}", value))
    return out
