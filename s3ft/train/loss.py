"""The training loss without full-vocabulary logits: the LM head runs only on labelled positions, in chunks.

Full logits cost tokens x vocabulary: at 8,192 tokens and a 128k vocabulary that is 2 GB in bf16, 4 GB
more for the float32 copy cross-entropy works in, and as much again for its gradient. Here, for the one
call the causal LM makes to its head, the head computes the loss instead of the logits: it keeps the
positions whose label is a target token and runs `ChunkedLinearCrossEntropy` over them, `chunk` rows at
a time, recomputing each chunk's logits in backward instead of keeping them. Peak memory holds one
chunk of logits, whatever the vocabulary and the micro batch.

The head is still called once, as a module, per micro batch: DeepSpeed ZeRO-3 gathers its partitioned
weight for that call and for its backward exactly as it would for the logits, and every rank makes the
same calls (a rank whose micro batch has no label still calls it, with no rows). On CUDA, with Liger
Kernel installed, Liger's fused linear cross-entropy takes the chunks' place. Models that transform
their logits after the head (soft-capping, logit scales), or whose head is not a plain linear layer,
get full logits.
"""

from __future__ import annotations

import importlib.util
import inspect
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F

from s3ft.train.batching import IGNORE

CHUNK_LOGITS = 1 << 25  # logits per chunk (rows x vocabulary): 128 MiB in float32
LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier_scale")


def nll_sum(model, batch: dict, chunk_logits: int = CHUNK_LOGITS) -> torch.Tensor:
    """Summed negative log-likelihood of the labelled tokens (labels already shifted), computed in fp32.

    `model` is a causal LM, a peft model around one, or a DeepSpeed engine around either; the entries of
    `batch` other than labels (flash-attention boundaries included) go to the model as keyword arguments."""
    lm = causal_lm(model)
    if not chunkable(lm):
        return full_logits_nll(model, batch)
    head = lm.get_output_embeddings()
    labels = batch["labels"].reshape(-1)
    where = batch.get("labelled")  # flat indices of the labelled positions, from collate (no host sync here)
    where = torch.nonzero(labels != IGNORE).flatten() if where is None else where
    calls = []

    def head_loss(hidden: torch.Tensor) -> torch.Tensor:
        calls.append(hidden.shape[:-1].numel())
        rows = hidden.reshape(-1, hidden.shape[-1]).index_select(0, where)
        return labelled_nll(head, rows, labels.index_select(0, where), chunk_logits)

    with replaced_forward(head, head_loss):
        # the output passes through ZeRO-3's hooks (they gather the head's weight again for backward): use it
        loss = model(**model_inputs(batch), use_cache=False).logits
    if calls != [labels.numel()] or loss.dim() != 0:
        raise RuntimeError(f"{type(lm).__name__} does not hand its head every position's hidden state and its "
                           "output as logits, so s3ft cannot compute the loss in chunks (report this model type)")
    return loss


def full_logits_nll(model, batch: dict) -> torch.Tensor:
    """The plain way (logits for every position, then fp32 cross-entropy): the fallback and the reference."""
    logits = model(**model_inputs(batch), use_cache=False).logits
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), batch["labels"].reshape(-1),
                           ignore_index=IGNORE, reduction="sum")


def labelled_nll(head: torch.nn.Linear, hidden: torch.Tensor, targets: torch.Tensor, chunk_logits: int) -> torch.Tensor:
    """Summed NLL of `targets` under head(hidden) (rows of hidden: labelled positions only), in fp32."""
    if use_liger(hidden):
        from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

        fused = LigerFusedLinearCrossEntropyLoss(reduction="sum", ignore_index=IGNORE)
        return fused(head.weight, hidden, targets, head.bias).float()
    rows = max(1, chunk_logits // head.out_features)
    return ChunkedLinearCrossEntropy.apply(hidden, head.weight, head.bias, targets, rows)


class ChunkedLinearCrossEntropy(torch.autograd.Function):
    """sum_i CE(hidden_i @ W^T + b, y_i), `rows` rows at a time; backward recomputes each chunk's logits.

    Logits and softmax are float32, as `F.cross_entropy(logits.float())` has them; the weight's gradient
    is summed over chunks in float32 and handed back in the weight's dtype."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, rows: int):
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for start in range(0, hidden.shape[0], rows):
            logits = F.linear(hidden[start : start + rows], weight, bias).float()
            total += F.cross_entropy(logits, targets[start : start + rows], reduction="sum")
        ctx.save_for_backward(hidden, weight, bias, targets)
        ctx.rows = rows
        return total

    @staticmethod
    def backward(ctx, grad_total):
        hidden, weight, bias, targets = ctx.saved_tensors
        grad_hidden = torch.empty_like(hidden)
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
        grad_bias = torch.zeros(bias.shape, dtype=torch.float32, device=bias.device) if bias is not None else None
        for start in range(0, hidden.shape[0], ctx.rows):
            h, y = hidden[start : start + ctx.rows], targets[start : start + ctx.rows]
            grad_logits = F.linear(h, weight, bias).float().softmax(-1)
            grad_logits[torch.arange(len(y), device=y.device), y] -= 1.0
            grad_logits *= grad_total
            grad_hidden[start : start + ctx.rows] = (grad_logits.to(weight.dtype) @ weight).to(hidden.dtype)
            grad_weight.addmm_(grad_logits.T, h.float())
            if grad_bias is not None:
                grad_bias += grad_logits.sum(0)
        return (grad_hidden, grad_weight.to(weight.dtype),
                grad_bias.to(bias.dtype) if grad_bias is not None else None, None, None)


@contextmanager
def replaced_forward(module: torch.nn.Module, fn: Callable) -> Iterator[None]:
    """Calls to `module` run `fn` in place of its forward, still through the module's hooks (DeepSpeed ZeRO-3
    gathers the weights for them)."""
    module.forward = fn
    try:
        yield
    finally:
        del module.forward


def model_inputs(batch: dict) -> dict:
    return {k: v for k, v in batch.items() if k not in ("labels", "labelled")}


def causal_lm(model) -> torch.nn.Module:
    """The transformers causal LM inside a DeepSpeed engine and/or a peft model."""
    model = getattr(model, "module", model)  # DeepSpeed engine
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def chunkable(lm: torch.nn.Module) -> bool:
    """Whether the logits are exactly head(hidden states): a plain linear head and no transform after it."""
    config = getattr(lm, "config", None)
    head = lm.get_output_embeddings() if hasattr(lm, "get_output_embeddings") else None
    return (
        type(head) is torch.nn.Linear
        and "logits_to_keep" in inspect.signature(lm.forward).parameters  # a transformers 5 causal LM head
        and not any(getattr(config, name, None) not in (None, 1, 1.0) for name in LOGIT_TRANSFORMS)
    )


def use_liger(hidden: torch.Tensor) -> bool:
    return hidden.is_cuda and torch.is_grad_enabled() and importlib.util.find_spec("liger_kernel") is not None
