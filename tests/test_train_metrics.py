"""The MFU's FLOP count against hand computations: dense, LoRA (frozen weights 4 FLOPs, not 6), MoE (active
experts only), and configs whose head_dim is None."""

from __future__ import annotations

import pytest
import torch

from s3ft.train.metrics import attention_shape, flop_counts

# The tiny Llama of s3ft.models.tiny: hidden 128, 2 layers, 2 heads of 64 (as many KV heads), MLP 256, vocab 104.
H, LAYERS, MLP, VOCAB = 128, 2, 256, 104
BODY = LAYERS * (4 * H * H + 3 * H * MLP + 2 * H) + H  # q k v o, gate up down, two norms per layer; the final norm
HEAD = VOCAB * H


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from s3ft.models.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("flops") / "model")


def test_dense_model_counts_six_flops_per_weight_without_the_embedding(tiny):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny, dtype=torch.float32)
    counts = flop_counts(model)
    assert (counts.body, counts.head, counts.layers, counts.attn_dim) == (6 * BODY, 6 * HEAD, LAYERS, H)
    # a step of two rows (100 and 60 tokens, 70 target tokens in all)
    expected = 6 * BODY * 160 + 6 * HEAD * 70 + 6 * LAYERS * H * (100**2 + 60**2)
    assert counts.step(160, 70, 100**2 + 60**2) == expected


def test_lora_counts_frozen_weights_as_forward_and_input_gradient_only(tiny):
    from transformers import AutoModelForCausalLM

    from s3ft.config.train import LoraConfig
    from s3ft.train.lora import add_lora

    model = add_lora(AutoModelForCausalLM.from_pretrained(tiny, dtype=torch.float32), LoraConfig(r=8))
    adapters = LAYERS * 4 * (8 * H + H * 8)  # A and B on q k v o
    counts = flop_counts(model)
    assert counts.body == 4 * BODY + 6 * adapters and counts.head == 4 * HEAD


def test_moe_counts_active_experts_and_head_dim_none_falls_back():
    from transformers import MixtralConfig, MixtralForCausalLM

    config = MixtralConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, num_local_experts=8, num_experts_per_tok=2,
                           head_dim=None)
    assert config.head_dim is None or config.head_dim == 8
    config.head_dim = None  # as Mixtral checkpoints load in transformers 5.19
    assert attention_shape(config) == (2, 32)
    model = MixtralForCausalLM(config)
    experts = sum(p.numel() for n, p in model.named_parameters() if ".experts." in n)
    dense = sum(p.numel() for p in model.parameters()) - experts - 2 * 64 * 32  # minus embedding and head
    assert experts == 2 * 8 * 3 * 32 * 48
    assert flop_counts(model).body == pytest.approx(6 * dense + 6 * experts * 2 / 8)
