"""Rows → tokens → micro batches, and every check the trainer makes before a rank starts (no DeepSpeed)."""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from s3ft.config.train import TrainConfig
from s3ft.errors import ConfigError, DataError, ModelError
from s3ft.train.batching import IGNORE, collate, pack, packed, padded, padding_fraction, plan_fingerprint, plan_steps
from s3ft.train.dsconfig import resolve_deepspeed_config
from s3ft.train.tokenize import split_eval, tokenize_rows


def write_rows(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def qa_rows(n: int, long_every: int = 0) -> list[dict]:
    rows = []
    for i in range(n):
        target = "x" * (40 if long_every and i % long_every == 0 else 1 + i % 7)
        rows.append({"id": f"r{i}", "messages": [{"role": "user", "content": f"q{i}?"}], "target": target,
                     "source": "gold"})
    return rows


@pytest.fixture(scope="module")
def tokenizer():
    from s3ft.models.tiny import build_char_tokenizer

    return build_char_tokenizer()


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    from s3ft.models.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model", hidden_size=64, num_layers=1)


def test_prompt_is_the_generation_prompt_and_target_ends_with_eos(tokenizer, tmp_path):
    path = write_rows(tmp_path / "m.jsonl", [{"id": "a", "messages": [{"role": "user", "content": "2+3="}],
                                              "target": "5"}])
    data, stats = tokenize_rows(tokenizer, path, max_seq_len=64, truncation="error")
    row = data.row(0).tolist()
    p = int(data.prompt_lens[0])
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "2+3="}], tokenize=False,
                                           add_generation_prompt=True)
    assert tokenizer.decode(row[:p]) == prompt
    assert row[p:] == tokenizer("5", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    assert stats.rows == 1 and stats.truncated == stats.dropped == 0


def test_prompt_string_rows_are_accepted(tokenizer, tmp_path):
    path = write_rows(tmp_path / "m.jsonl", [{"id": "a", "prompt": "hi", "target": "yo"}])
    data, _ = tokenize_rows(tokenizer, path, max_seq_len=64, truncation="error")
    assert tokenizer.decode(data.row(0)[: data.prompt_lens[0]].tolist()) == "<|user|>hi</s><|assistant|>"


def test_labels_cover_exactly_the_target_and_eos(tokenizer, tmp_path):
    path = write_rows(tmp_path / "m.jsonl", qa_rows(3))
    data, _ = tokenize_rows(tokenizer, path, max_seq_len=64, truncation="error")
    for mb in (packed([0, 1, 2]), padded([0, 1, 2])):
        batch = collate(data, mb, pad_id=tokenizer.pad_token_id)
        assert int((batch["labels"] != IGNORE).sum()) == sum(data.target_tokens(i) for i in range(3))
    # packed: labels are the next token of the same row, never of the next row
    batch = collate(data, packed([0, 1]), pad_id=tokenizer.pad_token_id)
    n0 = len(data.row(0))
    assert batch["labels"][0, n0 - 1] == IGNORE  # the last token of row 0 predicts nothing
    assert batch["labels"][0, n0 - 2] == tokenizer.eos_token_id
    assert batch["position_ids"][0, n0] == 0  # positions restart at row 1


@pytest.mark.parametrize("policy", ["truncate_left", "drop"])
def test_truncation_policies_count_rows(tokenizer, tmp_path, policy):
    path = write_rows(tmp_path / "m.jsonl", qa_rows(9, long_every=3))
    data, stats = tokenize_rows(tokenizer, path, max_seq_len=24, truncation=policy)
    assert data.lengths().max() <= 24
    if policy == "drop":
        assert (stats.dropped, stats.truncated, len(data)) == (3, 0, 6)
        assert stats.dropped_ids == ["r0", "r3", "r6"]
    else:
        assert (stats.dropped, stats.truncated, len(data)) == (0, 3, 9)
        assert data.row(0)[-1] == tokenizer.eos_token_id  # the target end survives left truncation


def test_too_long_rows_are_an_error_naming_line_and_count(tokenizer, tmp_path):
    path = write_rows(tmp_path / "m.jsonl", qa_rows(9, long_every=3))
    with pytest.raises(DataError, match=r"line 1: 3 row\(s\) exceed train.max_seq_len=24") as err:
        tokenize_rows(tokenizer, path, max_seq_len=24, truncation="error")
    assert err.value.line == 1


def test_empty_merged_set_is_an_error(tokenizer, tmp_path):
    path = write_rows(tmp_path / "m.jsonl", [])
    with pytest.raises(DataError, match="no rows to train on"):
        tokenize_rows(tokenizer, path, max_seq_len=64, truncation="error")
    with pytest.raises(DataError, match="not found"):
        tokenize_rows(tokenizer, tmp_path / "missing.jsonl", max_seq_len=64, truncation="error")


def test_bad_rows_name_the_field(tokenizer, tmp_path):
    path = write_rows(tmp_path / "m.jsonl", [{"id": "a", "messages": [{"role": "user", "content": "q"}]}])
    with pytest.raises(DataError, match="line 1, field 'target'"):
        tokenize_rows(tokenizer, path, max_seq_len=64, truncation="error")
    path = write_rows(tmp_path / "d.jsonl", qa_rows(2) + qa_rows(1))
    with pytest.raises(DataError, match="duplicate id 'r0'"):
        tokenize_rows(tokenizer, path, max_seq_len=64, truncation="error")


def test_eval_split_is_stable_and_disjoint(tokenizer, tmp_path):
    rows = qa_rows(200)
    data, _ = tokenize_rows(tokenizer, write_rows(tmp_path / "a.jsonl", rows), max_seq_len=64, truncation="error")
    shuffled, _ = tokenize_rows(tokenizer, write_rows(tmp_path / "b.jsonl", rows[::-1]), max_seq_len=64,
                                truncation="error")
    train, held = split_eval(data, 0.1, seed=0)
    _, held2 = split_eval(shuffled, 0.1, seed=0)
    assert set(held.ids) == set(held2.ids) and not set(held.ids) & set(train.ids)
    assert 5 <= len(held) <= 40 and len(train) + len(held) == 200


def test_packing_respects_budget_and_trains_each_row_once_per_epoch(tokenizer, tmp_path):
    data, _ = tokenize_rows(tokenizer, write_rows(tmp_path / "m.jsonl", qa_rows(101, long_every=50)), max_seq_len=64,
                            truncation="error")
    steps = plan_steps(data, world_size=2, grad_accum=3, budget=128, packing=True, seed=1, epochs=2)
    lengths = data.lengths()
    for step in steps:
        assert len(step.micro_batches) == 6
        for mb in step.micro_batches:
            if mb:
                assert len(mb) * max(lengths[list(seq)].sum() for seq in mb) <= 128
    for epoch in (0, 1):
        seen = Counter(r for s in steps if s.epoch == epoch for r in s.rows())
        assert sorted(seen) == list(range(101)) and set(seen.values()) == {1}
    assert steps[0].rows() != sorted(steps[0].rows())  # shuffled
    # packing fills sequences: far fewer sequences than rows, little padding
    assert sum(len(mb) for s in steps for mb in s.micro_batches) < 101 * 2 / 2.5
    unpacked = plan_steps(data, world_size=2, grad_accum=3, budget=128, packing=False, seed=1, epochs=2)
    assert padding_fraction(data, steps) < padding_fraction(data, unpacked) / 2
    again = plan_steps(data, world_size=2, grad_accum=3, budget=128, packing=True, seed=1, epochs=2)
    assert plan_fingerprint(again, data) == plan_fingerprint(steps, data)
    other = plan_steps(data, world_size=2, grad_accum=3, budget=128, packing=True, seed=2, epochs=2)
    assert plan_fingerprint(other, data) != plan_fingerprint(steps, data)


def test_max_steps_and_fractional_epochs(tokenizer, tmp_path):
    data, _ = tokenize_rows(tokenizer, write_rows(tmp_path / "m.jsonl", qa_rows(40)), max_seq_len=64,
                            truncation="error")
    full = plan_steps(data, world_size=1, grad_accum=1, budget=64, packing=True, seed=0, epochs=1)
    half = plan_steps(data, world_size=1, grad_accum=1, budget=64, packing=True, seed=0, epochs=0.5)
    assert len(half) == -(-len(full) // 2)
    many = plan_steps(data, world_size=1, grad_accum=1, budget=64, packing=True, seed=0, epochs=1, max_steps=25)
    assert len(many) == 25 and many[-1].epoch >= 1


def test_padding_counts_in_the_budget_and_positions_continue(tokenizer, tmp_path):
    data, _ = tokenize_rows(tokenizer, write_rows(tmp_path / "m.jsonl", qa_rows(30)), max_seq_len=64,
                            truncation="error")
    for packing in (False, True):
        steps = plan_steps(data, world_size=1, grad_accum=1, budget=64, packing=packing, seed=0, epochs=1)
        for step in steps:
            (mb,) = step.micro_batches
            batch = collate(data, mb, pad_id=0)
            assert batch["input_ids"].numel() <= 64
            real = data.lengths()[[r for seq in mb for r in seq]].sum()
            assert int((batch["input_ids"] != 0).sum()) == real
            # after the last row, positions keep counting: causal attention never sees the padding
            assert bool((batch["position_ids"].diff(dim=1) != 1).sum() == sum(len(seq) - 1 for seq in mb))


def test_first_fit_packs_tightly():
    bins = pack(np.array([5, 5, 3, 2, 5]), np.arange(5), capacity=10)
    assert bins == [[0, 1], [2, 3, 4]]


def test_deepspeed_auto_values_are_filled_from_the_train_section():
    cfg = TrainConfig(grad_accum=4, max_grad_norm=0.5, lr=1e-4, deepspeed="zero3_offload")
    ds = resolve_deepspeed_config(cfg, world_size=8, bf16=True, hidden_size=128)
    assert ds["gradient_accumulation_steps"] == 4 and ds["train_batch_size"] == 32
    assert ds["train_micro_batch_size_per_gpu"] == 1 and ds["gradient_clipping"] == 0.5
    assert ds["bf16"]["enabled"] is True and ds["optimizer"]["params"]["lr"] == 1e-4
    assert ds["zero_optimization"]["reduce_bucket_size"] == 128 * 128
    for name in ("zero3", "zero2"):
        ds = resolve_deepspeed_config(TrainConfig(deepspeed=name), world_size=2, bf16=False, hidden_size=64)
        assert "auto" not in json.dumps(ds)


def test_a_deepspeed_json_contradicting_the_train_section_is_refused(tmp_path):
    ds = {"zero_optimization": {"stage": 3}, "train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": 2,
          "gradient_clipping": "auto"}
    path = tmp_path / "ds.json"
    path.write_text(json.dumps(ds))
    with pytest.raises(ConfigError) as err:
        resolve_deepspeed_config(TrainConfig(deepspeed=str(path), grad_accum=1), world_size=1, bf16=False,
                                 hidden_size=64)
    assert "train_micro_batch_size_per_gpu is 4" in str(err.value)
    assert "gradient_accumulation_steps is 2" in str(err.value) and "train.grad_accum gives 1" in str(err.value)
    path.write_text(json.dumps({"scheduler": {"type": "WarmupLR"}}))
    with pytest.raises(ConfigError, match="scheduler"):
        resolve_deepspeed_config(TrainConfig(deepspeed=str(path)), world_size=1, bf16=False, hidden_size=64)
    with pytest.raises(ConfigError, match="no file"):
        resolve_deepspeed_config(TrainConfig(deepspeed="zero9"), world_size=1, bf16=False, hidden_size=64)


def test_train_config_validates():
    with pytest.raises(ValueError, match="micro_batch_tokens"):
        TrainConfig(micro_batch_tokens=100, max_seq_len=200)
    with pytest.raises(ValueError, match="extra"):
        TrainConfig(learning_rate=1.0)
    assert all(f.description for f in TrainConfig.model_fields.values())
    for kernel in ("sdpa", "eager", "flex_attention", "flash_attention_2", "flash_attention_3"):
        assert TrainConfig(attn_implementation=kernel).attn_implementation == kernel
    for kernel in ("paged|flash_attention_2", "sdpa_paged", "my_kernel"):
        with pytest.raises(ValueError, match=f"attn_implementation '{kernel}' cannot keep packed rows apart"):
            TrainConfig(attn_implementation=kernel)


def test_errors_come_before_any_rank_starts(tiny_model_dir, tmp_path, monkeypatch):
    from s3ft.train import train

    cfg = TrainConfig(launcher="local", max_seq_len=16, micro_batch_tokens=64)
    with pytest.raises(ModelError, match="does not exist"):
        train(tmp_path, str(tmp_path / "no-model"), cfg)
    write_rows(tmp_path / "data" / "merged.jsonl", [])
    with pytest.raises(DataError, match="no rows"):
        train(tmp_path, str(tiny_model_dir), cfg)
    write_rows(tmp_path / "data" / "merged.jsonl", qa_rows(4, long_every=2))
    with pytest.raises(DataError, match="exceed train.max_seq_len"):
        train(tmp_path, str(tiny_model_dir), cfg)
    with pytest.raises(ConfigError, match="bf16"):
        train(tmp_path, str(tiny_model_dir), cfg.model_copy(update={"bf16": True, "use_gpu": False}))
    longer = cfg.model_copy(update={"max_seq_len": 4096, "micro_batch_tokens": 4096})
    with pytest.raises(ConfigError, match=r"max_seq_len=4096 exceeds the model's context \(2048 tokens\)"):
        train(tmp_path, str(tiny_model_dir), longer)
    ds = tmp_path / "ds.json"
    ds.write_text(json.dumps({"zero_optimization": {"stage": 3}, "gradient_accumulation_steps": 2}))
    with pytest.raises(ConfigError, match="gradient_accumulation_steps is 2 .* but train.grad_accum gives 1"):
        train(tmp_path, str(tiny_model_dir), cfg.model_copy(update={"deepspeed": str(ds)}))
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if not installed
    with pytest.raises(ConfigError, match="wandb package is not installed: pip install wandb"):
        train(tmp_path, str(tiny_model_dir), cfg.model_copy(update={"report_to": ["jsonl", "wandb"]}))
    assert not (tmp_path / "checkpoints").exists() and not (tmp_path / "model").exists()
    assert not (tmp_path / "logs").exists() and not (tmp_path / "train").exists()


def test_cli_reads_an_experiment_yaml_or_a_train_section(tmp_path):
    import yaml

    from s3ft.train.__main__ import load_train_settings, main, parse_args

    exp = tmp_path / "exp.yaml"
    exp.write_text(yaml.safe_dump({"output_dir": str(tmp_path / "run"), "model": {"path": "m"},
                                   "data": {"path": "x", "task": "gsm8k"}, "train": {"lr": 1e-4, "epochs": 2}}))
    run_dir, model, cfg = load_train_settings(parse_args(["--config", str(exp), "--set", "train.lr=0.5",
                                                          "--set", "lora.r=4", "--local_rank=1"]))
    assert (run_dir, model, cfg.lr, cfg.epochs, cfg.lora.r) == (tmp_path / "run", "m", 0.5, 2, 4)
    section = tmp_path / "train.yaml"
    section.write_text("launcher: local\nmax_steps: 3\n")
    run_dir, model, cfg = load_train_settings(parse_args(["--config", str(section), "--run-dir", "r", "--model",
                                                          "p"]))
    assert (str(run_dir), model, cfg.launcher, cfg.max_steps) == ("r", "p", "local", 3)
    section.write_text("max_step: 3\n")
    with pytest.raises(ConfigError, match="train.max_step: Extra inputs"):
        load_train_settings(parse_args(["--config", str(section), "--run-dir", "r", "--model", "p"]))
    assert main(["--config", str(section), "--run-dir", "r", "--model", "p"]) == 2  # printed, no traceback


def test_cli_takes_the_config_positionally_as_launchers_pass_it(tmp_path):
    """`python -m s3ft.train CONFIG`, also as the deepspeed launcher runs it (`--local_rank=N` first)."""
    import yaml

    from s3ft.train.__main__ import load_train_settings, parse_args

    exp = tmp_path / "exp.yaml"
    exp.write_text(yaml.safe_dump({"output_dir": str(tmp_path / "run"), "model": {"path": "m"},
                                   "train": {"lr": 1e-4, "max_steps": 7}}))
    for argv in ([str(exp)], ["--local_rank=3", str(exp)], [str(exp), "--set", "max_steps=7"],
                 [str(exp), "--config", str(exp)]):
        run_dir, model, cfg = load_train_settings(parse_args(argv))
        assert (run_dir, model, cfg.lr, cfg.max_steps) == (tmp_path / "run", "m", 1e-4, 7)
    with pytest.raises(SystemExit):
        parse_args([str(exp), "--config", str(tmp_path / "other.yaml")])


def test_bf16_with_accumulation_adds_and_reduces_gradients_in_fp32(tmp_path):
    for name in ("zero3", "zero2", "zero3_offload"):
        ds = resolve_deepspeed_config(TrainConfig(deepspeed=name, grad_accum=4), world_size=2, bf16=True,
                                      hidden_size=64)
        assert ds["data_types"] == {"grad_accum_dtype": "fp32"} and ds["communication_data_type"] == "fp32"
        one = resolve_deepspeed_config(TrainConfig(deepspeed=name, grad_accum=1), world_size=2, bf16=True,
                                       hidden_size=64)
        fp32 = resolve_deepspeed_config(TrainConfig(deepspeed=name, grad_accum=4), world_size=2, bf16=False,
                                        hidden_size=64)
        assert "data_types" not in one and "data_types" not in fp32 and "communication_data_type" not in fp32
    own = tmp_path / "ds.json"
    own.write_text(json.dumps({"zero_optimization": {"stage": 3}, "communication_data_type": "bf16"}))
    ds = resolve_deepspeed_config(TrainConfig(deepspeed=str(own), grad_accum=4), world_size=2, bf16=True,
                                  hidden_size=64)
    assert ds["communication_data_type"] == "bf16"  # the JSON's own choice stands


def test_bf16_is_off_on_cpu_and_refused_when_asked_for_there():
    from s3ft.train.driver import resolve_bf16

    assert resolve_bf16(TrainConfig(bf16="auto"), use_gpu=False) is False
    with pytest.raises(ConfigError, match="bf16: true needs GPUs"):
        resolve_bf16(TrainConfig(bf16=True), use_gpu=False)


@pytest.mark.parametrize("kind", ["mamba", "jamba", "lfm2", "qwen3_next", "falcon_h1"])
def test_packing_is_refused_for_models_whose_layers_ignore_position_ids(kind):
    from transformers import AutoConfig, LlamaConfig

    from s3ft.train.driver import check_packing

    config = AutoConfig.for_model(kind)
    with pytest.raises(ConfigError, match="recurrent layers .* set train.packing: false"):
        check_packing(config, TrainConfig(packing=True))
    check_packing(config, TrainConfig(packing=False))
    check_packing(LlamaConfig(), TrainConfig(packing=True))


def test_fast_first_fit_equals_the_plain_loop():
    """pack's skip-the-scan bound changes nothing: the same bins as first-fit over the last OPEN_BINS sequences."""
    from s3ft.train.batching import OPEN_BINS

    def plain(lengths, order, capacity):
        bins, room, first_open = [], [], 0
        for i in order.tolist():
            n = int(lengths[i])
            for b in range(first_open, len(bins)):
                if room[b] >= n:
                    bins[b].append(i)
                    room[b] -= n
                    break
            else:
                bins.append([i])
                room.append(capacity - n)
            first_open = max(first_open, len(bins) - OPEN_BINS)
        return bins

    rng = np.random.default_rng(7)
    for low, high in ((1, 2048), (1, 100), (900, 1100)):
        lengths = rng.integers(low, high, size=20_000)
        order = rng.permutation(len(lengths))
        assert pack(lengths, order, 2048) == plain(lengths, order, 2048)


def test_train_has_its_real_signature_and_importing_it_stays_light():
    import inspect
    import subprocess
    import sys

    from s3ft.train import train
    from s3ft.train.driver import train as driver_train

    assert train is driver_train
    assert list(inspect.signature(train).parameters) == ["run_dir", "model_path", "cfg", "data_path"]
    probe = "import sys, s3ft.train; print(sorted(m for m in ('torch', 'deepspeed') if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True, text=True)
    assert done.stdout.strip() == "[]"


def test_saved_rows_are_opened_memory_mapped_and_read_only(tokenizer, tmp_path):
    from s3ft.train.tokenize import TokenizedSet

    data, _ = tokenize_rows(tokenizer, write_rows(tmp_path / "m.jsonl", qa_rows(30)), max_seq_len=64,
                            truncation="error")
    data.save(tmp_path / "rows")
    loaded = TokenizedSet.load(tmp_path / "rows")
    for name in ("ids", "tokens", "offsets", "prompt_lens"):
        array = getattr(loaded, name)
        assert isinstance(array, np.memmap) and not array.flags.writeable, name
        assert np.array_equal(array, getattr(data, name)), name
    assert [loaded.ids[i] for i in range(3)] == [str(i) for i in data.ids[:3]]
    assert all(np.array_equal(loaded.row(i), data.row(i)) for i in range(len(data)))
