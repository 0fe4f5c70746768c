"""DeepSpeed on CPU: two gloo ranks equal one rank, a killed run resumes exactly, the model is built
partitioned, and the zero2 and zero3_offload configs train and export too.

Three runs of the same 6 steps on the same rows share the module: one rank with grad_accum 2 (local
launcher, in this process), two torchrun ranks with grad_accum 1, and two ranks killed after step 5
(checkpoint at step 4) then resumed. Exports are float32 so parameters compare tightly.
"""

from __future__ import annotations

import json
import os
import random
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from s3ft.errors import ConfigError, TrainingError
from s3ft.train import TrainConfig, train
from s3ft.train.loop import CRASH_ENV

pytestmark = pytest.mark.slow

BASE = {"max_steps": 6, "lr": 3e-3, "warmup_ratio": 0.2, "micro_batch_tokens": 160, "max_seq_len": 32,
        "save_every": 2, "keep_last": 2, "eval_fraction": 0.1, "export_dtype": "float32", "report_to": ["jsonl"],
        "seed": 3, "peak_tflops": 1.0}


def addition_rows(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        a, b = rng.randint(10, 49), rng.randint(10, 49)
        rows.append({"id": f"add-{i}", "messages": [{"role": "user", "content": f"{a}+{b}="}],
                     "target": str(a + b), "source": "gold"})
    return rows


def new_run(root: Path, name: str, rows: list[dict]) -> Path:
    run_dir = root / name
    (run_dir / "data").mkdir(parents=True)
    (run_dir / "data" / "merged.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return run_dir


def weights(model_dir: Path) -> dict:
    from safetensors.torch import load_file

    out = {}
    for f in sorted(model_dir.glob("*.safetensors")):
        out.update(load_file(f))
    return out


def jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from s3ft.models.tiny import build_tiny_model

    root = tmp_path_factory.mktemp("zero3")
    model = build_tiny_model(root / "base")
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "attention_dropout": 0.1}))  # RNG matters
    model = str(model)
    rows = addition_rows(120)
    out = {"model": model}

    one = new_run(root, "one_rank", rows)
    train(one, model, TrainConfig(**BASE, launcher="local", num_workers=1, grad_accum=2))
    out["one_rank"] = one

    two = new_run(root, "two_ranks", rows)
    train(two, model, TrainConfig(**BASE, launcher="torchrun", num_workers=2, grad_accum=1))
    out["two_ranks"] = two

    killed = new_run(root, "killed", rows)
    cfg = TrainConfig(**BASE, launcher="torchrun", num_workers=2, grad_accum=1)
    mp = pytest.MonkeyPatch()
    mp.setenv(CRASH_ENV, "5")
    with pytest.raises(TrainingError, match=r"training failed: torchrun exited .* resume from the checkpoint of step 4"):
        train(killed, model, cfg)
    mp.undo()
    out["after_kill"] = {
        "checkpoints": sorted(p.name for p in (killed / "checkpoints").glob("step_*")),
        "rows_steps": [r["step"] for r in jsonl(killed / "logs" / "rows.jsonl")],
        "model_exists": (killed / "model").exists(),
    }
    train(killed, model, cfg)
    out["resumed"] = killed
    return out


def test_two_ranks_take_the_same_steps_as_one(runs):
    a, b = weights(runs["one_rank"] / "model"), weights(runs["two_ranks"] / "model")
    base = weights(Path(runs["model"]))
    assert a.keys() == b.keys() == base.keys()
    moved = max((a[k] - base[k]).abs().max().item() for k in a)
    diff = max((a[k] - b[k]).abs().max().item() for k in a)
    assert moved > 1e-3  # training changed the weights ...
    assert diff < 1e-5 * max(1.0, moved * 100)  # ... identically on one rank and on two
    la = [m["loss"] for m in jsonl(runs["one_rank"] / "logs" / "metrics.jsonl") if m["split"] == "train"]
    lb = [m["loss"] for m in jsonl(runs["two_ranks"] / "logs" / "metrics.jsonl") if m["split"] == "train"]
    assert la == pytest.approx(lb, rel=1e-5) and len(la) == 6


def test_killed_run_had_a_checkpoint_and_no_model(runs):
    after = runs["after_kill"]
    assert after["checkpoints"] == ["step_00000002", "step_00000004"]
    assert after["rows_steps"] == [1, 2, 3, 4, 5] and not after["model_exists"]


def test_resumed_run_equals_the_uninterrupted_one(runs):
    ref, res = runs["two_ranks"], runs["resumed"]
    rows_ref, rows_res = jsonl(ref / "logs" / "rows.jsonl"), jsonl(res / "logs" / "rows.jsonl")
    assert [r["step"] for r in rows_res] == [1, 2, 3, 4, 5, 6]
    assert rows_res == rows_ref  # the same rows at the same steps: none twice, none skipped
    trained = [i for r in rows_res for i in r["ids"]]
    summary = json.loads((res / "train" / "summary.json").read_text())
    assert len(set(trained)) == summary["train_rows"]  # 6 steps cover the train split (then epoch 2 begins)
    a, b = weights(ref / "model"), weights(res / "model")
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-6
    losses = [(m["step"], m["loss"]) for m in jsonl(res / "logs" / "metrics.jsonl") if m["split"] == "train"]
    ref_losses = [(m["step"], m["loss"]) for m in jsonl(ref / "logs" / "metrics.jsonl") if m["split"] == "train"]
    assert [s for s, _ in losses] == [1, 2, 3, 4, 5, 6]
    assert [l for _, l in losses] == pytest.approx([l for _, l in ref_losses], rel=1e-6)
    assert sorted(p.name for p in (res / "checkpoints").glob("step_*")) == ["step_00000004", "step_00000006"]


def test_resume_on_another_rank_count_is_refused_before_ranks_start(runs):
    cfg = TrainConfig(**BASE, launcher="local", num_workers=1, grad_accum=2)
    with pytest.raises(ConfigError, match=r"written by 2 rank\(s\) but this run has 1.*num_workers=2"):
        train(runs["resumed"], runs["model"], cfg)


def test_eval_loss_is_logged_at_checkpoints(runs):
    evals = [m for m in jsonl(runs["two_ranks"] / "logs" / "metrics.jsonl") if m["split"] == "eval"]
    assert [m["step"] for m in evals] == [2, 4, 6]
    assert evals[-1]["loss"] < evals[0]["loss"]


def test_mfu_is_the_hand_counted_flops_over_the_synchronised_step_time(runs):
    """The tiny Llama (hidden 128, 2 layers, MLP 256, vocab 104): 6 FLOPs per body weight per token, 6 per head
    weight per target token, causal attention per row; the embedding counts nothing."""
    from s3ft.train.tokenize import TokenizedSet

    run = runs["one_rank"]
    data = TokenizedSet.load(run / "train" / "train_rows")
    length = dict(zip(data.ids, data.lengths().tolist()))
    target = dict(zip(data.ids, (data.lengths() - np.maximum(data.prompt_lens, 1)).tolist()))
    body = 2 * (4 * 128 * 128 + 3 * 128 * 256 + 2 * 128) + 128
    logged = [m for m in jsonl(run / "logs" / "metrics.jsonl") if m["split"] == "train"]
    steps = jsonl(run / "logs" / "rows.jsonl")
    assert len(logged) == len(steps) == 6
    for m, step in zip(logged, steps):
        lens = [length[i] for i in step["ids"]]
        tokens, targets = sum(lens), sum(target[i] for i in step["ids"])
        flops = 6 * body * tokens + 6 * 104 * 128 * targets + 6 * 2 * 128 * sum(n * n for n in lens)
        assert (m["tokens"], m["target_tokens"]) == (tokens, targets)
        assert m["mfu"] == pytest.approx(flops / m["step_time"] / 1e12, rel=1e-9)


def test_step_one_equals_a_plain_pytorch_step(runs):
    """DeepSpeed's step-1 loss and gradient norm equal plain PyTorch on the same micro batches and dropout."""
    import torch
    from transformers import AutoModelForCausalLM

    from s3ft.train.batching import collate, plan_steps
    from s3ft.train.loop import _dropout_seed
    from s3ft.train.loss import nll_sum
    from s3ft.train.tokenize import TokenizedSet

    run = runs["two_ranks"]
    data = TokenizedSet.load(run / "train" / "train_rows")
    step = plan_steps(data, world_size=2, grad_accum=1, budget=BASE["micro_batch_tokens"], packing=True,
                      seed=BASE["seed"], epochs=3, max_steps=BASE["max_steps"])[0]
    assert [data.ids[i] for i in step.rows()] == jsonl(run / "logs" / "rows.jsonl")[0]["ids"]
    model = AutoModelForCausalLM.from_pretrained(runs["model"], dtype=torch.float32, attn_implementation="sdpa")
    model.train()
    total = 0.0
    for j, mb in enumerate(step.micro_batches):
        torch.manual_seed(_dropout_seed(BASE["seed"], 1, j))
        total = total + nll_sum(model, collate(data, mb, pad_id=0))
    (total / step.target_tokens).backward()
    norm = torch.sqrt(sum((p.grad.double() ** 2).sum() for p in model.parameters())).item()
    logged = [m for m in jsonl(run / "logs" / "metrics.jsonl") if m["split"] == "train"]
    assert logged[0]["loss"] == pytest.approx((total / step.target_tokens).item(), rel=1e-5)
    assert logged[0]["grad_norm"] == pytest.approx(norm, rel=1e-4)
    one = [m for m in jsonl(runs["one_rank"] / "logs" / "metrics.jsonl") if m["split"] == "train"]
    assert [m["grad_norm"] for m in one] == pytest.approx([m["grad_norm"] for m in logged], rel=1e-5)


PARTITION_SCRIPT = textwrap.dedent("""
    import os, sys
    import torch
    from s3ft.config.train import TrainConfig
    from s3ft.train import groups
    from s3ft.train.dsconfig import resolve_deepspeed_config
    from s3ft.train.model import load_model

    groups.start(use_gpu=False, timeout_s=600)
    cfg = TrainConfig(deepspeed="zero3")
    ds = resolve_deepspeed_config(cfg, world_size=2, bf16=False, hidden_size=128)
    model, handle = load_model(sys.argv[1], cfg, ds, torch.float32)
    torch.save({n: {"ds_id": getattr(p, "ds_id", None), "ds_numel": getattr(p, "ds_numel", None),
                    "local": p.data.numel(), "part": p.ds_tensor.detach().clone() if hasattr(p, "ds_tensor") else None}
                for n, p in model.named_parameters()}, os.path.join(sys.argv[2], f"rank{os.environ['RANK']}.pt"))
    torch.distributed.destroy_process_group()
""")


def test_model_is_partitioned_across_ranks_when_loaded(tmp_path):
    """Under ZeRO-3 init each of 2 ranks holds half of every weight and no full copy; the halves are the weights."""
    import torch
    from transformers import AutoModelForCausalLM

    from s3ft.models.tiny import build_tiny_model

    base = build_tiny_model(tmp_path / "base")
    script = tmp_path / "partition.py"
    script.write_text(PARTITION_SCRIPT)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", str(script), str(base),
           str(tmp_path)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    full = dict(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).named_parameters())
    assert ranks[0].keys() == ranks[1].keys() == full.keys()
    for name, weight in full.items():
        a, b = ranks[0][name], ranks[1][name]
        assert a["ds_id"] is not None and a["ds_id"] == b["ds_id"] and a["ds_numel"] == weight.numel()
        assert a["local"] == b["local"] == 0  # no rank holds the full tensor
        assert a["part"].numel() == b["part"].numel() == -(-weight.numel() // 2)  # each holds half
        halves = torch.cat([a["part"], b["part"]])[: weight.numel()]
        assert torch.equal(halves, weight.detach().reshape(-1)), name  # together they are exactly the weight


CHUNKED_LOSS_SCRIPT = textwrap.dedent("""
    import os, sys
    import deepspeed, torch
    from deepspeed.utils import safe_get_full_grad
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from s3ft.train.batching import collate
    from s3ft.config.train import TrainConfig
    from s3ft.train import groups
    from s3ft.train.dsconfig import resolve_deepspeed_config
    from s3ft.train.loss import full_logits_nll, nll_sum
    from s3ft.train.model import load_model
    from s3ft.train.tokenize import TokenizedSet

    model_path, data_path, out = sys.argv[1:4]
    groups.start(use_gpu=False, timeout_s=600)
    rank = int(os.environ["RANK"])
    data = TokenizedSet.load(data_path)
    mbs = [((0, 1), (2, 4)), ()]  # rank 1 has a dummy: no label, yet the same collectives
    batches = [collate(data, mb, pad_id=0) for mb in mbs]
    plain = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)  # whole, before ZeRO-3 init
    ref_losses = []
    for b in batches:
        loss = full_logits_nll(plain, b)
        if loss.requires_grad:
            loss.backward()  # grads summed over both micro batches
        ref_losses.append(loss.item())
    cfg = TrainConfig(deepspeed="zero3", gradient_checkpointing=False)
    ds = resolve_deepspeed_config(cfg, world_size=2, bf16=False, hidden_size=128)
    model, handle = load_model(model_path, cfg, ds, torch.float32)
    assert model.lm_head.weight.numel() == 0  # partitioned: the loss must gather it through the module
    opt = torch.optim.AdamW(model.parameters(), lr=0.0)
    engine, *_ = deepspeed.initialize(model=model, optimizer=opt, config=ds)
    loss = nll_sum(engine, batches[rank], chunk_logits=5 * model.config.vocab_size)
    engine.backward(loss)
    grads = {n: safe_get_full_grad(p) for n, p in engine.module.named_parameters()}
    ref = {n: p.grad / 2 for n, p in plain.named_parameters()}  # DeepSpeed averages over the ranks
    torch.save({"loss": loss.item(), "ref_loss": ref_losses[rank],
                "diff": {n: (grads[n] - ref[n]).abs().max().item() for n in ref},
                "scale": {n: ref[n].abs().max().item() for n in ref}}, os.path.join(out, f"rank{rank}.pt"))
    torch.distributed.destroy_process_group()
""")


def test_chunked_loss_under_zero3_equals_full_logits(tmp_path):
    """2 gloo ranks, ZeRO-3 (lm_head partitioned), one with a dummy micro batch: loss and every gathered gradient
    equal full-logits PyTorch."""
    import torch

    from s3ft.models.tiny import build_tiny_model
    from s3ft.train.tokenize import tokenize_rows

    base = build_tiny_model(tmp_path / "base")
    merged = new_run(tmp_path, "run", addition_rows(6)) / "data" / "merged.jsonl"
    from transformers import AutoTokenizer

    data, _ = tokenize_rows(AutoTokenizer.from_pretrained(base), merged, max_seq_len=32, truncation="error")
    data.save(tmp_path / "rows")
    script = tmp_path / "chunked.py"
    script.write_text(CHUNKED_LOSS_SCRIPT)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", str(script), str(base),
           str(tmp_path / "rows"), str(tmp_path)]
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    for r in (0, 1):
        out = torch.load(tmp_path / f"rank{r}.pt")
        assert out["loss"] == pytest.approx(out["ref_loss"], rel=1e-6)
        assert "lm_head.weight" in out["diff"] and len(out["diff"]) == 21
        for name, diff in out["diff"].items():
            assert diff <= 1e-5 * max(1.0, out["scale"][name]), name


@pytest.fixture
def one_rank_group(monkeypatch):
    """A one-rank gloo group in this process (the checkpoint functions synchronise ranks), torn down after."""
    from s3ft.runtime.ports import free_port
    from s3ft.train import groups

    for key, value in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": str(free_port())}.items():
        monkeypatch.setenv(key, value)
    groups.start(use_gpu=False, timeout_s=600)
    yield
    groups.stop()


def test_rng_state_is_restored_from_a_checkpoint(tmp_path, one_rank_group):
    """Through a real ZeRO-3 engine: DeepSpeed's save and load run (and may draw random numbers) around s3ft's RNG
    files; a resume continues every generator from where the checkpoint was taken, with the weights of then."""
    import deepspeed
    import torch

    from s3ft.train import checkpoint

    def draws() -> tuple:
        return random.random(), float(np.random.rand()), torch.rand(3).tolist()

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Dropout(0.5), torch.nn.Linear(8, 1))
    engine, *_ = deepspeed.initialize(model=model, optimizer=torch.optim.AdamW(model.parameters(), lr=0.1),
                                      config={"train_batch_size": 1, "zero_optimization": {"stage": 3}})

    def train_step() -> None:
        engine.backward(engine(torch.ones(1, 8)).sum())
        engine.step()

    def weights() -> list:
        return [deepspeed.utils.safe_get_full_fp32_param(p).clone() for p in engine.module.parameters()]

    train_step()
    random.seed(1)
    np.random.seed(1)
    torch.manual_seed(1)
    path = checkpoint.save(engine, tmp_path, 3, {"world_size": 1, "plan": "p"}, rank=0, keep_last=2)
    saved_weights, after_save = weights(), draws()
    assert any(p.name.endswith("model_states.pt") for p in path.iterdir())  # DeepSpeed's own files are there
    train_step()  # the run moves on: dropout draws, the weights change ...
    assert draws() != after_save
    assert any(not torch.equal(a, b) for a, b in zip(weights(), saved_weights))
    checkpoint.load(engine, path, rank=0)  # ... and a resume continues from where the checkpoint was taken
    assert draws() == after_save
    assert all(torch.equal(a, b) for a, b in zip(weights(), saved_weights))
    assert checkpoint.latest(tmp_path)[:2] == (3, path)


def wandb_history(wandb_dir: Path) -> tuple[dict, list[dict]]:
    """(run record fields, logged rows) of the one offline W&B run under `wandb_dir`, read from its .wandb log
    (a LevelDB-style log of protobuf records after a 7-byte header)."""
    from wandb.proto import wandb_internal_pb2 as pb

    (path,) = wandb_dir.glob("wandb/offline-run-*/run-*.wandb")
    data, pos, buf, run, rows = path.read_bytes(), 7, b"", {}, []
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # a block's tail too short for a header is padding
            pos += 32768 - pos % 32768
            continue
        _, size, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if size == kind == 0:
            break
        buf, pos = buf + data[pos + 7 : pos + 7 + size], pos + 7 + size
        if kind in (1, 4):  # a full record, or the last fragment of one
            record = pb.Record.FromString(buf)
            buf = b""
            if record.HasField("run"):
                run = {"project": record.run.project, "name": record.run.display_name}
            if record.HasField("history"):
                rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                             for item in record.history.item})
    return run, rows


@pytest.mark.parametrize("stage", ["zero2", "zero3_offload"])
def test_other_deepspeed_configs_train_and_export(tmp_path, monkeypatch, stage):
    """zero2 and zero3_offload (CPU Adam: DeepSpeed JIT-builds it once) learn and export a loadable model; the
    metrics also go to W&B (offline)."""
    import torch
    from transformers import AutoModelForCausalLM

    from s3ft.models.tiny import build_tiny_model

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb_files"))
    base = build_tiny_model(tmp_path / "base")
    run_dir = new_run(tmp_path, "run", addition_rows(40))
    cfg = TrainConfig(deepspeed=stage, launcher="local", max_steps=4, lr=1e-2, warmup_ratio=0.0, max_seq_len=32,
                      micro_batch_tokens=128, save_every=0, eval_fraction=0.0, export_dtype="float32",
                      report_to=["jsonl", "wandb"], wandb_project="s3ft-tests", wandb_run_name=stage)
    model_dir = train(run_dir, str(base), cfg)
    logged = [m for m in jsonl(run_dir / "logs" / "metrics.jsonl") if m["split"] == "train"]
    assert [m["step"] for m in logged] == [1, 2, 3, 4] and logged[-1]["loss"] < logged[0]["loss"]
    trained = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    plain = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    ids = torch.tensor([[5, 20, 30, 40]])
    with torch.no_grad():
        assert (trained(ids).logits - plain(ids).logits).abs().max() > 1e-3
    run, rows = wandb_history(tmp_path / "wandb_files")
    assert run == {"project": "s3ft-tests", "name": stage}
    assert [r["_step"] for r in rows] == [1, 2, 3, 4]
    assert [r["train/loss"] for r in rows] == pytest.approx([m["loss"] for m in logged], rel=1e-9)
    assert all({"train/lr", "train/grad_norm", "train/tokens_per_s"} <= r.keys() for r in rows)
