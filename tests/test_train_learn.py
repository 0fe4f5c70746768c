"""A tiny Llama learns 2-digit addition under `torchrun -m s3ft.train CONFIG` (2 ranks, ZeRO-3), and the
exported 16-bit model, in several safetensors shards, loads and generates in transformers and in vLLM (CPU)."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow

PROMPT = [{"role": "user", "content": "21+34="}]


def addition_rows(n: int) -> list[dict]:
    rng = random.Random(7)
    rows = []
    for i in range(n):
        a, b = rng.randint(10, 49), rng.randint(10, 49)
        rows.append({"id": f"add-{i}", "messages": [{"role": "user", "content": f"{a}+{b}="}],
                     "target": f"{a + b}", "source": "gold"})
    return rows


def jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """The user's way under torchrun: every rank runs the CLI on an experiment YAML."""
    from s3ft.models.tiny import build_tiny_model

    root = tmp_path_factory.mktemp("learn")
    base = build_tiny_model(root / "base")
    run_dir = root / "run"
    (run_dir / "data").mkdir(parents=True)
    (run_dir / "data" / "merged.jsonl").write_text("".join(json.dumps(r) + "\n" for r in addition_rows(400)))
    config = {
        "output_dir": str(run_dir), "model": {"path": str(base)},
        "train": {"launcher": "torchrun", "num_workers": 2, "lr": 3e-3, "warmup_ratio": 0.05, "max_seq_len": 32,
                  "micro_batch_tokens": 512, "eval_fraction": 0.05, "eval_every": 10, "max_steps": 10,
                  "report_to": ["jsonl", "tensorboard"], "peak_tflops": 1.0,
                  "export_shard_size": "200KB"},  # the ~0.7 MB bf16 model in several shards
    }
    (root / "exp.yaml").write_text(yaml.safe_dump(config))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m", "s3ft.train",
           str(root / "exp.yaml"), "--set", "train.max_steps=40"]
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return {"base": base, "run_dir": run_dir, "stdout": proc.stdout}


def test_loss_goes_down(run):
    metrics = jsonl(run["run_dir"] / "logs" / "metrics.jsonl")
    train = [m["loss"] for m in metrics if m["split"] == "train"]
    evals = [m["loss"] for m in metrics if m["split"] == "eval"]
    assert len(train) == 40 and len(evals) == 4  # --set overrode max_steps; eval every 10 steps
    assert sum(train[-5:]) / 5 < 0.6 * sum(train[:3]) / 3
    assert evals[-1] < evals[0] < train[0]
    assert all(m["grad_norm"] > 0 and m["tokens_per_s"] > 0 and 0 < m["mfu"] < 1 for m in metrics
               if m["split"] == "train")
    assert list((run["run_dir"] / "logs" / "tensorboard").glob("events.out.tfevents.*"))
    assert "model written to" in run["stdout"]


def test_exported_model_is_a_16bit_hf_folder(run):
    model_dir = run["run_dir"] / "model"
    config = json.loads((model_dir / "config.json").read_text())
    assert config["dtype"] == "bfloat16"
    assert (model_dir / "tokenizer.json").is_file() and (model_dir / "generation_config.json").is_file()
    from safetensors import safe_open

    index = json.loads((model_dir / "model.safetensors.index.json").read_text())["weight_map"]
    shards = sorted(model_dir.glob("*.safetensors"))
    assert len(shards) >= 3 and sorted(set(index.values())) == [s.name for s in shards]
    stored = {}
    for shard in shards:
        assert shard.stat().st_size <= 200_000 + 70_000  # a shard only outgrows the limit by one tensor
        with safe_open(shard, "pt") as f:
            assert all(f.get_slice(k).get_dtype() == "BF16" for k in f.keys())  # noqa: SIM118 - safe_open is no dict
            stored.update(dict.fromkeys(f.keys(), shard.name))
    assert stored == index  # every weight is in the shard the index names, and nowhere else


def test_exported_model_generates_in_transformers(run):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir = run["run_dir"] / "model"
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    trained = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    base = AutoModelForCausalLM.from_pretrained(run["base"], dtype=torch.float32)
    prompt = tokenizer.apply_chat_template(PROMPT, tokenize=False, add_generation_prompt=True)
    ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
    out = trained.generate(ids, max_new_tokens=6, do_sample=False)[0, ids.shape[1]:]
    text = tokenizer.decode(out, skip_special_tokens=True)
    assert len(out) > 0 and text[:1].isdigit(), text  # it learned that answers are numbers
    with torch.no_grad():
        assert not torch.allclose(trained(ids).logits, base(ids).logits, atol=1e-2)


VLLM_SCRIPT = textwrap.dedent("""
    import json, sys

    def main():
        from vllm import LLM, SamplingParams
        llm = LLM(model=sys.argv[1], dtype="bfloat16", max_model_len=64, enforce_eager=True)
        out = llm.generate([sys.argv[2]], SamplingParams(max_tokens=6, temperature=0.0))
        print("RESULT " + json.dumps({"text": out[0].outputs[0].text, "ids": list(out[0].outputs[0].token_ids)}))

    if __name__ == "__main__":
        main()
""")


def test_exported_model_generates_in_vllm_cpu(run, tmp_path):
    """vLLM is part of the environment: if it is missing, the script's import fails this test (never a skip)."""
    from transformers import AutoTokenizer

    model_dir = run["run_dir"] / "model"
    prompt = AutoTokenizer.from_pretrained(model_dir).apply_chat_template(PROMPT, tokenize=False,
                                                                          add_generation_prompt=True)
    script = tmp_path / "gen.py"
    script.write_text(VLLM_SCRIPT)
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
    proc = subprocess.run([sys.executable, str(script), str(model_dir), prompt], check=False, capture_output=True, text=True,
                          timeout=400, env=env)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stdout[-2000:] + proc.stderr[-4000:]
    result = json.loads(lines[0][len("RESULT "):])
    assert result["ids"] and result["text"][:1].isdigit(), result
