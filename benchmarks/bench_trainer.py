"""Training throughput: s3ft's trainer against Hugging Face `Trainer`, same model, rows and ZeRO-3 config.

Both train one epoch of the same rows (tokenized once, by s3ft) on a small random Llama with the
same DeepSpeed JSON (configs/deepspeed/zero3.json, its "auto" values filled by each trainer), the
same attention kernel and no gradient checkpointing. s3ft packs rows into micro batches of
`--micro-batch-tokens`; HF pads each batch to its longest row, with the batch size that holds the
same number of real tokens on average. Throughput is real (non-padding) tokens per second of
training steps, the first steps (warm-up) excluded. Each side runs in its own process(es). Prints
both padding fractions and tokens/s, then `ratio=ours/hf` as the last line.

    python benchmarks/bench_trainer.py [--rows 600] [--ranks 1] [--micro-batch-tokens 4096]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WARMUP_STEPS = 2
WORDS = "the of and to in is was for on that with as by at from his an were are which this be or had".split()


def make_rows(n: int, seed: int = 0) -> list[dict]:
    """Chat rows with a wide spread of lengths, like real SFT data (short answers and long ones)."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        prompt = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 40)))
        target = " ".join(rng.choice(WORDS) for _ in range(int(rng.paretovariate(1.2) * 4)))[:900]
        rows.append({"id": f"b{i}", "messages": [{"role": "user", "content": prompt}], "target": target or "ok",
                     "source": "gold"})
    return rows


def run_ours(work: Path, args: argparse.Namespace) -> dict:
    from s3ft.train import TrainConfig, train

    cfg = TrainConfig(launcher="local" if args.ranks == 1 else "torchrun", num_workers=args.ranks, epochs=1,
                      lr=1e-4, micro_batch_tokens=args.micro_batch_tokens, max_seq_len=1024, packing=True,
                      gradient_checkpointing=False, save_every=0, eval_fraction=0.0, report_to=["jsonl"],
                      export_dtype="bfloat16", seed=0)
    train(work / "ours", str(work / "model"), cfg)
    steps = [json.loads(x) for x in (work / "ours" / "logs" / "metrics.jsonl").read_text().splitlines()]
    timed = [s for s in steps if s["split"] == "train"][WARMUP_STEPS:]
    summary = json.loads((work / "ours" / "train" / "summary.json").read_text())
    return {"tokens_per_s": sum(s["tokens"] for s in timed) / sum(s["step_time"] for s in timed),
            "padding": summary["padding_fraction"], "steps": len(steps)}


def hf_worker(work: Path, args: argparse.Namespace) -> None:
    """One rank of the HF Trainer run (started under torchrun); rank 0 writes hf.json."""
    import numpy as np
    import torch
    from transformers import (AutoModelForCausalLM, AutoTokenizer, DataCollatorForSeq2Seq, Trainer,
                              TrainerCallback, TrainingArguments)

    from s3ft.train.tokenize import TokenizedSet

    data = TokenizedSet.load(work / "ours" / "train" / "train_rows.npz")
    features = []
    for i in range(len(data)):
        ids = data.row(i).astype(np.int64).tolist()
        labels = [-100] * int(data.prompt_lens[i]) + ids[int(data.prompt_lens[i]):]
        features.append({"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels})
    mean_len = float(data.lengths().mean())
    batch = max(1, round(args.micro_batch_tokens / mean_len))
    tokenizer = AutoTokenizer.from_pretrained(work / "model")
    collate = DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100)
    counts = {"real": 0, "padded": 0}
    step_tokens: list[int] = []

    def counting_collate(items):
        out = collate(items)
        real = int(out["attention_mask"].sum())
        counts["real"] += real
        counts["padded"] += out["input_ids"].numel()
        step_tokens.append(real)
        return out

    times: list[float] = []

    class Timer(TrainerCallback):
        def on_step_begin(self, *a, **k):
            self.t0 = time.perf_counter()

        def on_step_end(self, *a, **k):
            times.append(time.perf_counter() - self.t0)

    import deepspeed

    deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo")  # before ZeRO-3 init
    ds_config = json.loads((Path(__file__).resolve().parents[1] / "configs" / "deepspeed" / "zero3.json").read_text())
    targs = TrainingArguments(
        output_dir=str(work / "hf"), per_device_train_batch_size=batch, num_train_epochs=1, learning_rate=1e-4,
        deepspeed=ds_config, bf16=False, report_to=[], save_strategy="no", logging_steps=10**9,
        dataloader_num_workers=0, remove_unused_columns=False, gradient_checkpointing=False, seed=0,
        use_cpu=not torch.cuda.is_available(), disable_tqdm=True,
    )
    model = AutoModelForCausalLM.from_pretrained(work / "model", dtype=torch.float32, attn_implementation="sdpa")
    model.config.use_cache = False
    trainer = Trainer(model=model, args=targs, train_dataset=features, data_collator=counting_collate,
                      callbacks=[Timer()])
    trainer.train()
    world = int(os.environ.get("WORLD_SIZE", 1))
    if int(os.environ.get("RANK", 0)) == 0:
        # the dataloader of each rank runs ahead by a batch or two; time the steps, count their tokens
        n = min(len(times), len(step_tokens))
        tokens = sum(step_tokens[WARMUP_STEPS:n]) * world
        result = {"tokens_per_s": tokens / sum(times[WARMUP_STEPS:n]), "batch_size": batch,
                  "padding": 1 - counts["real"] / counts["padded"], "steps": len(times)}
        (work / "hf.json").write_text(json.dumps(result))


def run_hf(work: Path, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={args.ranks}",
           __file__, "--hf-worker", str(work), "--micro-batch-tokens", str(args.micro_batch_tokens)]
    subprocess.run(cmd, check=True)
    return json.loads((work / "hf.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=600)
    parser.add_argument("--ranks", type=int, default=1)
    parser.add_argument("--micro-batch-tokens", type=int, default=4096)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--hf-worker", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.hf_worker:
        hf_worker(args.hf_worker, args)
        return

    from s3ft.models.tiny import build_tiny_model

    with tempfile.TemporaryDirectory(prefix="bench_trainer_") as tmp:
        work = Path(tmp)
        build_tiny_model(work / "model", hidden_size=args.hidden, num_layers=args.layers,
                         num_heads=max(1, args.hidden // 64))
        (work / "ours" / "data").mkdir(parents=True)
        rows = make_rows(args.rows)
        (work / "ours" / "data" / "merged.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        ours = run_ours(work, args)
        hf = run_hf(work, args)
    print(f"rows={args.rows} ranks={args.ranks} micro_batch_tokens={args.micro_batch_tokens} "
          f"hf_batch_size={hf['batch_size']}")
    print(f"padding_fraction ours={ours['padding']:.3f} hf={hf['padding']:.3f}")
    print(f"tokens_per_s ours={ours['tokens_per_s']:.0f} hf={hf['tokens_per_s']:.0f} "
          f"(steps ours={ours['steps']} hf={hf['steps']})")
    print(f"ratio={ours['tokens_per_s'] / hf['tokens_per_s']:.2f}")


if __name__ == "__main__":
    main()
