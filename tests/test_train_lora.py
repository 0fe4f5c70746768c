"""LoRA under ZeRO-3 with two Ray Train workers (the default launcher): the adapter is saved, trained
(non-zero), changes the model's output, and the merged export equals base + adapter."""

from __future__ import annotations

import json
import random
import signal
import time
from pathlib import Path

import psutil
import pytest

pytestmark = pytest.mark.slow


def rows(n: int) -> list[dict]:
    rng = random.Random(1)
    out = []
    for i in range(n):
        word = "".join(rng.choice("abcdefgh") for _ in range(rng.randint(3, 5)))
        out.append({"id": f"rev-{i}", "messages": [{"role": "user", "content": f"reverse {word}"}],
                    "target": word[::-1], "source": "gold"})
    return out


@pytest.fixture(scope="module")
def run(tmp_path_factory, ray_session):
    from s3ft.models.tiny import build_tiny_model
    from s3ft.train import TrainConfig, train

    root = tmp_path_factory.mktemp("lora")
    base = build_tiny_model(root / "base")
    run_dir = root / "run"
    (run_dir / "data").mkdir(parents=True)
    (run_dir / "data" / "merged.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows(80)))
    cfg = TrainConfig(launcher="ray", num_workers=2, max_steps=6, lr=1e-2, warmup_ratio=0.0, max_seq_len=48,
                      micro_batch_tokens=256, eval_fraction=0.1, export_dtype="float32", report_to=["jsonl"],
                      lora={"r": 4, "alpha": 8, "dropout": 0.05, "target_modules": ["q_proj", "v_proj", "o_proj"]})
    ctrl_c = signal.getsignal(signal.SIGINT)
    model_dir = train(run_dir, str(base), cfg)
    return {"base": base, "run_dir": run_dir, "model_dir": model_dir, "ctrl_c": ctrl_c}


def test_a_finished_run_leaves_no_controller_and_ctrl_c_as_it_was(run):
    """Ray Train's `fit` installs a Ctrl-C handler holding its controller: kept, it kept the controller's
    process alive until the command ended (one more per run of a sweep)."""
    assert signal.getsignal(signal.SIGINT) is run["ctrl_c"]
    deadline = time.monotonic() + 30  # Ray ends an actor whose last handle is gone within moments
    while (controllers := _processes_titled("ray::TrainController")) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not controllers


def _processes_titled(title: str) -> list[int]:
    """Live processes whose title (what Ray sets for an actor's worker) starts with `title`."""
    return [p.pid for p in psutil.process_iter(["cmdline"]) if " ".join(p.info["cmdline"] or []).startswith(title)]


def test_adapter_is_saved_and_trained(run):
    from safetensors.torch import load_file

    adapter = run["run_dir"] / "adapter"
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["r"] == 4 and config["lora_alpha"] == 8
    assert sorted(config["target_modules"]) == ["o_proj", "q_proj", "v_proj"]
    weights = load_file(adapter / "adapter_model.safetensors")
    assert len(weights) == 2 * 3 * 2  # 2 layers x 3 modules x (A, B)
    lora_b = [v for k, v in weights.items() if "lora_B" in k]
    assert len(lora_b) == 6 and all(v.abs().max() > 0 for v in lora_b)  # B starts at zero: non-zero = trained


def test_adapter_changes_the_output_and_merge_matches(run):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    ids = torch.tensor([[5, 60, 40, 60, 50, 70, 80, 2, 6]])
    base = AutoModelForCausalLM.from_pretrained(run["base"], dtype=torch.float32).eval()
    with torch.no_grad():
        base_logits = base(ids).logits
        adapted = PeftModel.from_pretrained(base, str(run["run_dir"] / "adapter")).eval()
        adapted_logits = adapted(ids).logits
        merged = AutoModelForCausalLM.from_pretrained(run["model_dir"], dtype=torch.float32).eval()
        merged_logits = merged(ids).logits
    assert (adapted_logits - base_logits).abs().max() > 1e-2
    assert torch.allclose(merged_logits, adapted_logits, atol=1e-4)
    assert run["model_dir"] == run["run_dir"] / "model"


def test_lora_run_logged_every_step(run):
    lines = [json.loads(x) for x in (Path(run["run_dir"]) / "logs" / "metrics.jsonl").read_text().splitlines()]
    train = [m for m in lines if m["split"] == "train"]
    assert [m["step"] for m in train] == [1, 2, 3, 4, 5, 6]
    assert train[-1]["loss"] < train[0]["loss"]


def test_unmerged_lora_returns_the_adapter_and_writes_no_model(run, tmp_path):
    from s3ft.train import TrainConfig, train

    run_dir = tmp_path / "unmerged"
    (run_dir / "data").mkdir(parents=True)
    (run_dir / "data" / "merged.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows(20)))
    (run_dir / "model").mkdir()
    (run_dir / "model" / "config.json").write_text("{}")  # an older export must not survive
    cfg = TrainConfig(launcher="local", max_steps=2, max_seq_len=48, micro_batch_tokens=256, save_every=0,
                      eval_fraction=0.0, report_to=[], lora={"r": 2, "alpha": 4}, merge_lora=False)
    out = train(run_dir, str(run["base"]), cfg)
    assert out == run_dir / "adapter" and (out / "adapter_model.safetensors").is_file()
    assert not (run_dir / "model").exists() and not (run_dir / "checkpoints").exists()
