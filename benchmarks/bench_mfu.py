"""MFU and peak GPU memory of bf16 ZeRO-3 training through s3ft's trainer on a randomly initialised ~1B Llama.

The model is Llama-shaped (hidden 2048, 16 layers, 32 query / 8 KV heads, MLP 8192, vocab 32000: 1.1B
parameters), built locally with random weights and the char-level tokenizer (its ids use a corner of the
vocabulary; throughput does not care). `s3ft.train.train` runs `--steps` optimizer steps of packed
synthetic rows with the bundled zero3.json in this process (local launcher, one GPU). MFU is the
trainer's own estimate (s3ft/train/metrics.py: 6 FLOPs per non-embedding weight per token, the head on
target tokens only, plus causal attention; recomputation not counted; step time read after a device
sync) over the timed steps, the first `--warmup` excluded. The trainer's defaults hold unless changed:
gradient checkpointing on (`--no-gradient-checkpointing` turns it off), the chunked loss; peak memory is
torch.cuda.max_memory_allocated of the training alone. The attention kernel is flash_attention_2 when
flash-attn is installed (each packed micro batch runs as one varlen sequence), else sdpa.

`--tiny` checks the script anywhere: a tiny fp32 model on CPU (gloo, one process) with a nominal peak of
1 TFLOP/s, so its MFU and ratio mean nothing. No network is needed. The last line is `ratio=MFU/0.40`.

    python benchmarks/bench_mfu.py [--steps 20] [--micro-batch-tokens 16384] [--no-gradient-checkpointing]
    python benchmarks/bench_mfu.py --tiny
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import random
import string
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from s3ft.config.train import TrainConfig  # light (pydantic only): the defaults below come from it

TARGET_MFU = 0.40
GPU_SHAPE = {"hidden": 2048, "layers": 16, "heads": 32, "kv_heads": 8, "mlp": 8192, "vocab": 32000}
TINY_SHAPE = {"hidden": 128, "layers": 2, "heads": 2, "kv_heads": 2, "mlp": 256, "vocab": 128}


def build_model(path: Path, shape: dict[str, int], max_len: int, on_gpu: bool) -> int:
    """Write a random Llama of `shape` (bf16 on GPU, fp32 on CPU) with the char tokenizer; returns its parameter count.

    Built on the GPU when there is one: initialising 1B parameters on the CPU takes minutes."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    from s3ft.models.tiny import build_char_tokenizer

    tokenizer = build_char_tokenizer()
    config = LlamaConfig(
        vocab_size=max(shape["vocab"], len(tokenizer)), hidden_size=shape["hidden"],
        intermediate_size=shape["mlp"], num_hidden_layers=shape["layers"], num_attention_heads=shape["heads"],
        num_key_value_heads=shape["kv_heads"], head_dim=shape["hidden"] // shape["heads"],
        max_position_embeddings=max_len, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    with torch.device("cuda" if on_gpu else "cpu"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16 if on_gpu else torch.float32)
    n_params = sum(p.numel() for p in model.parameters())
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    del model
    if on_gpu:
        torch.cuda.empty_cache()
    return n_params


def make_rows(n: int, max_len: int, seed: int = 0) -> list[dict]:
    """Chat rows of random text, prompt + target between a quarter of `max_len` and (almost) all of it."""
    rng = random.Random(seed)
    letters = string.ascii_lowercase + " "
    rows = []
    for i in range(n):
        total = rng.randint(max_len // 4, max_len - 16)
        prompt = "".join(rng.choices(letters, k=min(64, total // 4)))
        target = "".join(rng.choices(letters, k=total - len(prompt)))
        rows.append({"id": f"m{i}", "messages": [{"role": "user", "content": prompt}], "target": target,
                     "source": "gold"})
    return rows


def attention_kernel(requested: str, on_gpu: bool) -> str:
    if requested != "auto":
        return requested
    return "flash_attention_2" if on_gpu and importlib.util.find_spec("flash_attn") else "sdpa"


def summarise(metrics_file: Path, warmup: int) -> dict[str, float]:
    """Tokens/s and MFU over the timed steps: total tokens and FLOPs over total time, not means of ratios."""
    steps = [m for m in map(json.loads, metrics_file.read_text().splitlines()) if m["split"] == "train"][warmup:]
    if not steps:
        raise SystemExit(f"bench_mfu: no steps left after the {warmup} warm-up steps; raise --steps")
    seconds = sum(m["step_time"] for m in steps)
    return {"tokens_per_s": sum(m["tokens"] for m in steps) / seconds,
            "mfu": sum(m["mfu"] * m["step_time"] for m in steps) / seconds, "steps": len(steps)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="a tiny fp32 model on CPU: checks the script, not a figure")
    parser.add_argument("--steps", type=int, help="optimizer steps (default: 20; 8 with --tiny)")
    parser.add_argument("--warmup", type=int, default=2, help="first steps left out of the figures")
    parser.add_argument("--micro-batch-tokens", type=int, help="tokens per micro batch (default: 16384; 512 tiny)")
    parser.add_argument("--max-seq-len", type=int, help="longest row, the packed sequence length (2048; 128 tiny)")
    parser.add_argument("--layers", type=int, help="decoder layers (default: 16)")
    parser.add_argument("--attn", default="auto", help="attention kernel (auto: flash_attention_2 if installed)")
    parser.add_argument("--gradient-checkpointing", action=argparse.BooleanOptionalAction,
                        default=TrainConfig.model_fields["gradient_checkpointing"].default,
                        help="recompute activations (not counted in MFU); on by default, as in the trainer")
    parser.add_argument("--peak-tflops", type=float, help="device peak for MFU (default: the trainer's table)")
    args = parser.parse_args()

    import torch

    from s3ft.train import train
    from s3ft.train.metrics import peak_tflops

    on_gpu = torch.cuda.is_available() and not args.tiny
    shape = dict(TINY_SHAPE if args.tiny else GPU_SHAPE)
    shape["layers"] = args.layers or shape["layers"]
    steps = args.steps or (8 if args.tiny else 20)
    budget = args.micro_batch_tokens or (512 if args.tiny else 16384)
    max_len = args.max_seq_len or (128 if args.tiny else 2048)
    peak = args.peak_tflops or (peak_tflops(None, on_gpu=True) if on_gpu else 1.0)
    if peak is None:
        raise SystemExit(f"bench_mfu: no known peak TFLOP/s for {torch.cuda.get_device_name()}; pass --peak-tflops")
    attn = attention_kernel(args.attn, on_gpu)

    with tempfile.TemporaryDirectory(prefix="bench_mfu_") as tmp:
        work = Path(tmp)
        n_params = build_model(work / "model", shape, max_len, on_gpu)
        rows = make_rows(max(64, 2 * steps * budget // max_len), max_len)
        (work / "run" / "data").mkdir(parents=True)
        (work / "run" / "data" / "merged.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        cfg = TrainConfig(launcher="local", deepspeed="zero3", use_gpu=on_gpu, max_steps=steps, lr=1e-4,
                          micro_batch_tokens=budget, max_seq_len=max_len, attn_implementation=attn,
                          gradient_checkpointing=args.gradient_checkpointing, save_every=0, eval_fraction=0.0,
                          report_to=["jsonl"], peak_tflops=peak, seed=0)
        if on_gpu:
            torch.cuda.reset_peak_memory_stats()
        train(work / "run", str(work / "model"), cfg)
        peak_mem = torch.cuda.max_memory_allocated() / 2**30 if on_gpu else None
        result = summarise(work / "run" / "logs" / "metrics.jsonl", args.warmup)
        padding = json.loads((work / "run" / "train" / "summary.json").read_text())["padding_fraction"]

    device = torch.cuda.get_device_name() if on_gpu else "CPU (--tiny: nominal peak, MFU means nothing)"
    print(f"model: {n_params / 1e6:,.1f}M parameters, hidden {shape['hidden']}, {shape['layers']} layers, "
          f"vocab {shape['vocab']}; {'bf16' if on_gpu else 'fp32'} ZeRO-3, 1 rank on {device}")
    print(f"attn={attn} gradient_checkpointing={args.gradient_checkpointing} micro_batch_tokens={budget} "
          f"max_seq_len={max_len} padding_fraction={padding:.3f}")
    print(f"steps timed={result['steps']} (first {args.warmup} excluded) tokens_per_s={result['tokens_per_s']:.0f}")
    print(f"mfu={result['mfu']:.4f} (of a peak of {peak:g} TFLOP/s per device)")
    print(f"peak_gpu_memory_gib={peak_mem:.2f}" if peak_mem is not None else "peak_gpu_memory_gib=n/a (CPU)")
    print(f"ratio={result['mfu'] / TARGET_MFU:.3f}")


if __name__ == "__main__":
    main()
