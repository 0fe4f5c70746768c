"""The loss itself, on a plain tiny Llama (no DeepSpeed): packing changes nothing (flash-attention layout
included), prompts carry no loss; and the model as load_model builds it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

from s3ft.config.train import TrainConfig
from s3ft.train.batching import IGNORE, collate, flatten, packed, padded
from s3ft.train.loss import full_logits_nll, nll_sum
from s3ft.train.model import load_model, lr_lambda
from s3ft.train.tokenize import tokenize_rows

ROWS = [
    {"id": "a", "messages": [{"role": "user", "content": "12+30="}], "target": "42"},
    {"id": "b", "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello there"}],
     "target": "hi, friend"},
    {"id": "c", "messages": [{"role": "user", "content": "reverse: stone"}], "target": "enots"},
    {"id": "d", "prompt": "x", "target": "a much longer answer than the others"},
]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from s3ft.models.tiny import build_tiny_model

    root = tmp_path_factory.mktemp("loss")
    path = build_tiny_model(root / "model")
    merged = root / "merged.jsonl"
    merged.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    tokenizer = AutoTokenizer.from_pretrained(path)
    data, _ = tokenize_rows(tokenizer, merged, max_seq_len=128, truncation="error")
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="sdpa").eval()
    return model, tokenizer, data, path


def mean_loss(model, data, micro_batches, pad_id):
    total = count = 0.0
    for mb in micro_batches:
        batch = collate(data, mb, pad_id=pad_id)
        total += nll_sum(model, batch).item()
        count += int((batch["labels"] != IGNORE).sum())
    return total / count


@pytest.mark.parametrize("attn", ["sdpa", "eager", "flex_attention"])
def test_packed_and_unpacked_give_the_same_loss(setup, attn):
    from transformers import AutoModelForCausalLM

    _, tokenizer, data, path = setup
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation=attn).eval()
    pad = tokenizer.pad_token_id
    with torch.no_grad():
        one_sequence = mean_loss(model, data, [packed([0, 1, 2, 3])], pad)
        padded_rows = mean_loss(model, data, [padded([0, 1, 2, 3])], pad)
        one_by_one = mean_loss(model, data, [padded([0]), padded([1]), padded([2]), padded([3])], pad)
        mixed = mean_loss(model, data, [((3, 1), (2,)), packed([0])], pad)  # padded packed sequences
    assert one_sequence == pytest.approx(padded_rows, abs=1e-4)
    assert one_sequence == pytest.approx(one_by_one, abs=1e-4)
    assert one_sequence == pytest.approx(mixed, abs=1e-4)


def test_packing_without_restarting_positions_would_differ(setup):
    """The check above has teeth: attention leaking across rows changes the loss."""
    model, tokenizer, data, _ = setup
    batch = collate(data, packed([0, 1, 2, 3]), pad_id=tokenizer.pad_token_id)
    leaky = dict(batch, position_ids=torch.arange(batch["input_ids"].shape[1])[None])
    with torch.no_grad():
        assert abs(nll_sum(model, leaky).item() - nll_sum(model, batch).item()) > 1e-2


def test_flash_attention_batches_are_one_sequence_split_at_every_row(setup):
    """Flash kernels go varlen only for one sequence: flattened, with every row's boundary computed at collate."""
    from transformers.modeling_flash_attention_utils import _is_packed_sequence, prepare_fa_kwargs_from_position_ids

    from s3ft.train.loop import micro_batch_tensors

    model, tokenizer, data, _ = setup
    mb = ((3, 1), (2,), (0,))  # a packed sequence and two shorter ones, padded at the end
    batch = collate(data, mb, pad_id=tokenizer.pad_token_id)
    assert not _is_packed_sequence(batch["position_ids"], batch_size=3)  # as is, flash would let rows see each other
    flat = flatten(batch)
    width, lengths, expected = batch["input_ids"].shape[1], data.lengths(), []
    for k, seq in enumerate(mb):
        starts = k * width + np.concatenate([[0], np.cumsum(lengths[list(seq)])[:-1]])
        expected += starts.tolist()  # each row starts a segment; the padding stays with the sequence's last row
    expected.append(3 * width)
    assert flat["cu_seq_lens_q"].tolist() == flat["cu_seq_lens_k"].tolist() == expected
    assert flat["cu_seq_lens_q"].dtype == torch.int32
    assert flat["max_length_q"] == flat["max_length_k"] == max(np.diff(expected))
    assert type(flat["max_length_q"]) is int  # a tensor here would cost a host sync in every layer
    (derived, _), _ = prepare_fa_kwargs_from_position_ids(flat["position_ids"])
    assert derived.tolist() == expected  # what transformers would have derived, layer by layer
    with torch.no_grad():
        assert nll_sum(model, flat).item() == pytest.approx(nll_sum(model, batch).item(), abs=1e-5)
    cpu = torch.device("cpu")
    flash = micro_batch_tensors(data, mb, TrainConfig(attn_implementation="flash_attention_2"), 0, cpu)
    sdpa = micro_batch_tensors(data, mb, TrainConfig(attn_implementation="sdpa"), 0, cpu)
    assert flash["input_ids"].shape == (1, 3 * width) and sdpa["input_ids"].shape == (3, width)
    assert "cu_seq_lens_q" in flash and "cu_seq_lens_q" not in sdpa


def test_every_attention_layer_receives_the_boundaries_forward_and_recompute(setup):
    """The varlen kwargs reach each attention layer as the very tensors collate made, in forward and in the
    recompute of gradient checkpointing: no layer derives them again (the flash path takes them as given when
    all four are set)."""
    from transformers import AutoModelForCausalLM

    _, tokenizer, data, path = setup
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="sdpa").train()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    flat = flatten(collate(data, ((3, 1), (2,), (0,)), pad_id=tokenizer.pad_token_id))
    seen = []
    keys = ("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k")

    def record(_module, _args, kwargs):
        seen.append({k: kwargs.get(k) for k in keys})

    hooks = [layer.self_attn.register_forward_pre_hook(record, with_kwargs=True) for layer in model.model.layers]
    try:
        nll_sum(model, flat).backward()
    finally:
        for hook in hooks:
            hook.remove()
    assert len(seen) == 2 * len(model.model.layers)  # forward, then the recompute in backward
    for got in seen:
        assert got["cu_seq_lens_q"] is flat["cu_seq_lens_q"] and got["cu_seq_lens_k"] is flat["cu_seq_lens_k"]
        assert got["max_length_q"] == got["max_length_k"] == flat["max_length_q"]


def test_prompt_tokens_carry_no_loss(setup):
    model, tokenizer, data, _ = setup
    batch = collate(data, packed([0, 1, 2, 3]), pad_id=tokenizer.pad_token_id)
    out = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False)
    logits = out.logits.detach().requires_grad_(True)
    labels = batch["labels"]
    loss = F.cross_entropy(logits[0], labels[0], ignore_index=IGNORE, reduction="sum")
    loss.backward()
    touched = logits.grad[0].abs().sum(-1) > 0
    # the positions that get gradient are exactly those predicting a target token or EOS
    expected = torch.zeros_like(touched)
    start = 0
    for i in range(len(data)):
        n, p = len(data.row(i)), int(data.prompt_lens[i])
        expected[start + p - 1 : start + n - 1] = True
        start += n
    assert torch.equal(touched, expected)
    # labelling every position (plain LM training) would put loss on the prompt: a different number
    naive = batch["input_ids"].clone().roll(-1, dims=1)
    naive[batch["position_ids"].roll(-1, dims=1) == 0] = IGNORE  # still never across rows
    with torch.no_grad():
        assert nll_sum(model, dict(batch, labels=naive)) > nll_sum(model, batch) + 1.0


def test_target_loss_matches_a_hand_computation(setup):
    """nll_sum over collated labels equals -log p(target + EOS | prompt) computed row by row."""
    model, tokenizer, data, _ = setup
    with torch.no_grad():
        expected = 0.0
        for i in range(len(data)):
            ids = torch.tensor(data.row(i), dtype=torch.long)[None]
            p = int(data.prompt_lens[i])
            logp = model(input_ids=ids, use_cache=False).logits.log_softmax(-1)[0]
            expected += -sum(logp[t - 1, ids[0, t]].item() for t in range(p, ids.shape[1]))
        got = nll_sum(model, collate(data, packed([0, 1, 2, 3]), pad_id=tokenizer.pad_token_id)).item()
    assert got == pytest.approx(expected, rel=1e-5)


def test_schedule_warms_up_then_decays_to_the_floor():
    f = lr_lambda(100, 0.1, 0.1)
    assert f(0) < f(5) < f(9) < f(10) == pytest.approx(1.0)
    assert f(55) == pytest.approx(0.55, abs=0.01)
    assert f(99) > f(100) == pytest.approx(0.1)


@pytest.mark.parametrize("on", [True, False])
def test_gradient_checkpointing_follows_the_config_and_recomputes(setup, on):
    """With it on, backward runs every decoder layer's forward again (and the gradients do not change)."""
    _, tokenizer, data, path = setup
    model, _ = load_model(str(path), TrainConfig(gradient_checkpointing=on), {"zero_optimization": {"stage": 2}},
                          torch.float32)
    assert model.is_gradient_checkpointing is on
    layers = model.model.layers
    assert all(layer.gradient_checkpointing is on for layer in layers) and len(layers) == 2
    calls = []
    hooks = [layer.register_forward_pre_hook(lambda *_: calls.append(1)) for layer in layers]  # recompute stops early
    model.train()
    batch = collate(data, packed([0, 1, 2, 3]), pad_id=tokenizer.pad_token_id)
    loss = nll_sum(model, batch)
    assert len(calls) == 2
    loss.backward()
    for hook in hooks:
        hook.remove()
    assert len(calls) == (4 if on else 2)
    grad = model.model.layers[0].mlp.up_proj.weight.grad
    plain = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).train()
    nll_sum(plain, batch).backward()
    assert torch.allclose(grad, plain.model.layers[0].mlp.up_proj.weight.grad, atol=1e-6)


def loss_and_grads(model, batch, loss_fn):
    model.zero_grad()
    loss = loss_fn(model, batch)
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("tied", [False, True])
def test_chunked_loss_equals_full_logits_in_value_and_gradients(setup, tied):
    """The head on labelled positions only, 7 tokens per chunk (several chunks, a ragged last one), with dropout."""
    from transformers import AutoModelForCausalLM

    from s3ft.train.loop import micro_batch_tensors
    from s3ft.train.loss import chunkable

    _, tokenizer, data, path = setup
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="sdpa",
                                                 attention_dropout=0.2).train()
    if tied:
        model.lm_head.weight = model.model.embed_tokens.weight
    assert chunkable(model) and (model.lm_head.weight is model.model.embed_tokens.weight) is tied
    batch = collate(data, ((3, 1), (2, 0)), pad_id=tokenizer.pad_token_id)
    vocab = model.config.vocab_size
    torch.manual_seed(5)
    full, full_grads = loss_and_grads(model, batch, full_logits_nll)
    torch.manual_seed(5)
    chunked, grads = loss_and_grads(model, batch, lambda m, b: nll_sum(m, b, chunk_logits=7 * vocab))
    torch.manual_seed(5)  # as the loop hands it over: labelled positions found at collate
    tensors = micro_batch_tensors(data, ((3, 1), (2, 0)), TrainConfig(), tokenizer.pad_token_id, torch.device("cpu"))
    assert torch.equal(tensors["labelled"], torch.nonzero(batch["labels"].reshape(-1) != IGNORE).flatten())
    assert loss_and_grads(model, tensors, lambda m, b: nll_sum(m, b, chunk_logits=7 * vocab))[0] == chunked
    assert int((batch["labels"] != IGNORE).sum()) > 3 * 7
    assert chunked == pytest.approx(full, rel=1e-6)
    assert grads.keys() == full_grads.keys() and ("lm_head.weight" in grads) is not tied  # tied: one parameter
    for name, g in full_grads.items():
        assert (grads[name] - g).abs().max().item() <= 1e-5 * max(1.0, g.abs().max().item()), name


def test_models_that_transform_their_logits_use_full_logits(setup):
    from transformers import AutoModelForCausalLM

    from s3ft.train.loss import chunkable

    model = AutoModelForCausalLM.from_pretrained(setup[3], dtype=torch.float32)
    model.config.final_logit_softcapping = 30.0
    assert not chunkable(model)
