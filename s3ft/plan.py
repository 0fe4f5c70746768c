"""`s3ft plan`: will this config fit its cluster? GPUs and memory for ZeRO-3 training (DeepSpeed's own
estimator, with and without offload) and for the vLLM engine layout, from the model's config alone.

The model is built on the meta device (no weights are read), so a 70B plan takes a second on a laptop.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from s3ft.config import ClusterConfig, Config
from s3ft.errors import ModelError

GIB = 2**30
BF16 = 2
# ZeRO-3 modes: (DeepSpeed's cpu_offload, cpu_offload_params) and the train.deepspeed name that selects them.
MODES = {"zero3": (False, False), "zero3 + optimizer offload": (True, False), "zero3_offload": (True, True)}


@dataclass(frozen=True)
class ModelShape:
    params: int
    largest_layer_params: int
    layers: int
    hidden: int
    kv_heads: int
    head_dim: int
    vocab: int


@dataclass
class Plan:
    model: ModelShape
    train: dict[str, Any] = field(default_factory=dict)
    generation: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    @property
    def fits(self) -> bool:
        return not self.warnings


def model_shape(path: str) -> ModelShape:
    """Parameter counts of the model at `path` (a folder or a config.json), built without weights."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise ModelError(
            f"cannot read the model config at '{path}' ({exc.__class__.__name__}); give a local folder or a "
            "config.json with --model-config (configs/models/ has the paper's models)"
        ) from None
    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(config)
    text = getattr(config, "text_config", config)
    heads = text.num_attention_heads
    return ModelShape(
        params=sum(p.numel() for p in model.parameters()),
        largest_layer_params=max(sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules()),
        layers=text.num_hidden_layers,
        hidden=text.hidden_size,
        kv_heads=getattr(text, "num_key_value_heads", None) or heads,
        head_dim=getattr(text, "head_dim", None) or text.hidden_size // heads,
        vocab=text.vocab_size,
    )


def activation_bytes(shape: ModelShape, tokens: int, checkpointing: bool) -> int:
    """Rough per-GPU activations of one micro batch: the saved layer inputs (all layers when
    checkpointing, else ~16 hidden-sized tensors per layer), plus fp32 logits."""
    per_layer = tokens * shape.hidden * BF16 * (1 if checkpointing else 16)
    return shape.layers * per_layer + tokens * shape.vocab * 4


def plan(cfg: Config, model_config: str | None = None) -> Plan:
    cluster = cfg.cluster or ClusterConfig()
    shape = model_shape(model_config or cfg.model.path)
    result = Plan(shape)
    _plan_training(cfg, cluster, shape, result)
    _plan_generation(cfg, cluster, shape, result)
    return result


def _plan_training(cfg: Config, cluster: ClusterConfig, shape: ModelShape, result: Plan) -> None:
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs

    train = cfg.train
    ranks = train.num_workers
    per_node = max(1, min(cluster.gpus_per_node, ranks))
    nodes = math.ceil(ranks / per_node)
    act = activation_bytes(shape, train.micro_batch_tokens, train.gradient_checkpointing)
    modes = {}
    for name, (offload, offload_params) in MODES.items():
        if train.lora:
            # frozen bf16 weights sharded over the ranks; the adapters and their optimizer are tiny
            gpu, cpu = shape.params * BF16 // ranks + 4 * shape.largest_layer_params, 0
            if offload_params:
                gpu, cpu = 4 * shape.largest_layer_params, shape.params * BF16 // nodes
        else:
            cpu, gpu, _ = estimate_zero3_model_states_mem_needs(
                shape.params, shape.largest_layer_params, per_node, nodes, offload, offload_params
            )
        fits = gpu + act <= cluster.gpu_memory_gib * GIB and cpu <= cluster.cpu_memory_gib * GIB
        modes[name] = {"gpu_gib": round((gpu + act) / GIB, 1), "model_states_gpu_gib": round(gpu / GIB, 1),
                       "cpu_gib_per_node": round(cpu / GIB, 1), "fits": fits}
    chosen = Path(train.deepspeed).stem if train.deepspeed.endswith(".json") else train.deepspeed
    result.train = {"ranks": ranks, "nodes": nodes, "gpus_per_node": per_node, "activations_gib": round(act / GIB, 1),
                    "lora": train.lora is not None, "deepspeed": chosen, "modes": modes}
    if ranks > cluster.nodes * max(cluster.gpus_per_node, 1):
        result.warnings.append(f"train.num_workers {ranks} is more than the cluster's "
                               f"{cluster.nodes * cluster.gpus_per_node} GPUs")
    if chosen in modes and not modes[chosen]["fits"]:
        better = [m for m, v in modes.items() if v["fits"]]
        result.warnings.append(
            f"training with {chosen} needs {modes[chosen]['gpu_gib']} GiB per GPU and "
            f"{modes[chosen]['cpu_gib_per_node']} GiB per node; the cluster has {cluster.gpu_memory_gib} / "
            f"{cluster.cpu_memory_gib} GiB. " + (f"Fits: {', '.join(better)}." if better else
                                                  "No ZeRO-3 mode fits: add GPUs or lower train.micro_batch_tokens.")
        )


def _plan_generation(cfg: Config, cluster: ClusterConfig, shape: ModelShape, result: Plan) -> None:
    gen = cfg.generation
    if cfg.selection.strategy == "sft":
        result.generation = {"engines": 0, "note": "sft needs no generation"}
        return
    weights = shape.params * BF16 / gen.tensor_parallel_size
    budget = cluster.gpu_memory_gib * GIB * gen.gpu_memory_utilization
    kv_per_token = 2 * shape.layers * shape.kv_heads * shape.head_dim * BF16 / gen.tensor_parallel_size
    kv_tokens = max(0, int((budget - weights) / kv_per_token))
    result.generation = {
        "engines": gen.num_engines, "tensor_parallel_size": gen.tensor_parallel_size,
        "gpus": gen.num_engines * gen.tensor_parallel_size, "weights_gib_per_gpu": round(weights / GIB, 1),
        "kv_cache_tokens_per_engine": kv_tokens,
    }
    if weights > budget:
        result.warnings.append(
            f"a vLLM engine with tensor_parallel_size {gen.tensor_parallel_size} holds {weights / GIB:.1f} GiB of "
            f"weights per GPU, over {gen.gpu_memory_utilization:.0%} of {cluster.gpu_memory_gib} GiB: raise "
            "generation.tensor_parallel_size"
        )
    elif kv_tokens < gen.max_tokens * 16:
        result.warnings.append(f"a vLLM engine has room for only {kv_tokens} KV-cache tokens: raise "
                               "generation.tensor_parallel_size or gpu_memory_utilization")
    judge_llm = cfg.judge.llm
    if judge_llm is not None and judge_llm.generation.num_engines * judge_llm.generation.tensor_parallel_size > (
        cluster.nodes * cluster.gpus_per_node
    ):
        result.warnings.append("the LLM judge's engines need more GPUs than the cluster has")
