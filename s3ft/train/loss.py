"""The training loss without full-vocabulary logits: the LM head runs only on labelled positions, in chunks.

Full logits cost tokens x vocabulary: at 8,192 tokens and a 128k vocabulary that is 2 GB in bf16, 4 GB
more for the float32 copy cross-entropy works in, and as much again for its gradient. Here the decoder's
last hidden states are taken from a forward hook (the causal LM is asked for one position of logits),
the positions whose label is a target token are selected, and the head plus cross-entropy run on
`chunk` of them at a time. Each chunk is checkpointed, so backward recomputes its logits instead of
keeping them: peak memory holds one chunk of logits, whatever the vocabulary and the micro batch.

The head is called as a module, chunk by chunk, so DeepSpeed ZeRO-3 gathers its partitioned weight in
each call (and in each recompute) and reduces its gradient as for any other layer. On CUDA, with Liger
Kernel installed and the head's weight whole on the device (not ZeRO-3 partitioned), Liger's fused
linear cross-entropy does the same in one kernel. Models that transform their logits after the head
(soft-capping, logit scales) or whose head is not a plain linear layer fall back to full logits.
"""

from __future__ import annotations

import importlib.util
import inspect

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from s3ft.train.batching import IGNORE

CHUNK_LOGITS = 1 << 25  # logits per chunk (tokens x vocabulary): 128 MiB in float32
LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier_scale")


def nll_sum(model, batch: dict[str, torch.Tensor | None], chunk_logits: int = CHUNK_LOGITS) -> torch.Tensor:
    """Summed negative log-likelihood of the labelled tokens (labels already shifted), computed in fp32.

    `model` is a causal LM, a peft model around one, or a DeepSpeed engine around either; extra entries of
    `batch` (flash-attention sequence boundaries) go to the model as keyword arguments."""
    lm = causal_lm(model)
    if not chunkable(lm):
        return full_logits_nll(model, batch)
    labels = batch["labels"]
    captured: list[torch.Tensor] = []

    def keep_hidden(_module, _args, output) -> None:
        captured.append(output[0] if isinstance(output, tuple) else output.last_hidden_state)

    hook = lm.get_decoder().register_forward_hook(keep_hidden)
    try:
        model(**model_inputs(batch), use_cache=False, logits_to_keep=1)
    finally:
        hook.remove()
    keep = labels != IGNORE
    hidden, targets = captured[0][keep], labels[keep]
    head = lm.get_output_embeddings()
    if use_liger(head, hidden):
        return liger_nll(head, hidden, targets)
    step = max(1, chunk_logits // head.out_features)
    total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, hidden.shape[0], step):
        h, y = hidden[start : start + step], targets[start : start + step]
        total = total + (checkpoint(_head_nll, head, h, y, use_reentrant=False) if torch.is_grad_enabled()
                         else _head_nll(head, h, y))
    return total


def full_logits_nll(model, batch: dict[str, torch.Tensor | None]) -> torch.Tensor:
    """The plain way (logits for every position, then fp32 cross-entropy): the fallback and the reference."""
    logits = model(**model_inputs(batch), use_cache=False).logits
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), batch["labels"].reshape(-1),
                           ignore_index=IGNORE, reduction="sum")


def model_inputs(batch: dict[str, torch.Tensor | None]) -> dict:
    return {k: v for k, v in batch.items() if k != "labels"}


def causal_lm(model) -> torch.nn.Module:
    """The transformers causal LM inside a DeepSpeed engine and/or a peft model."""
    model = getattr(model, "module", model)  # DeepSpeed engine
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def chunkable(lm: torch.nn.Module) -> bool:
    """Whether logits are exactly head(last hidden state): a plain linear head and no transform after it."""
    config = getattr(lm, "config", None)
    head = lm.get_output_embeddings() if hasattr(lm, "get_output_embeddings") else None
    return (
        type(head) is torch.nn.Linear
        and hasattr(lm, "get_decoder")
        and "logits_to_keep" in inspect.signature(lm.forward).parameters
        and not any(getattr(config, name, None) not in (None, 1, 1.0) for name in LOGIT_TRANSFORMS)
    )


def _head_nll(head: torch.nn.Linear, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(head(hidden).float(), targets, reduction="sum")


def use_liger(head: torch.nn.Linear, hidden: torch.Tensor) -> bool:
    """Liger's fused kernel needs CUDA and the whole head weight at hand (ZeRO-3 partitions it: chunks instead)."""
    return (hidden.is_cuda and torch.is_grad_enabled() and not hasattr(head.weight, "ds_id")
            and importlib.util.find_spec("liger_kernel") is not None)


def liger_nll(head: torch.nn.Linear, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

    fused = LigerFusedLinearCrossEntropyLoss(reduction="sum", ignore_index=IGNORE)
    return fused(head.weight, hidden, targets, head.bias).float()
