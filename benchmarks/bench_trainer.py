"""Training throughput: s3ft's trainer against Hugging Face `Trainer` and TRL's `SFTTrainer` (packing), same
model, rows and ZeRO-3 config.

All three train one epoch of the same rows on a small random Llama with the same DeepSpeed JSON
(configs/deepspeed/zero3.json, its "auto" values filled by each trainer), the same attention kernel
(sdpa) and no gradient checkpointing. s3ft packs rows into micro batches of `--micro-batch-tokens`;
HF pads each batch to its longest row, with the batch size that holds the same number of real
tokens on average; TRL packs the rows (given as prompt-completion chat rows, loss on the completion)
with its default "bfd" strategy into sequences as long as s3ft's (the longest row), as many per
batch as fit in `--micro-batch-tokens`.

The TRL comparison is on matched layouts (`--trl-layout batch`, the default): like s3ft's, each
batch is (packed sequences x their length), position ids restarting at every row and no attention
mask, so transformers' sdpa keeps rows apart with a block-diagonal mask per sequence in both. TRL's
own default for "bfd" (`--trl-layout padding-free`) flattens the batch into one sequence; on CPU sdpa
then builds one dense mask over all of it (about B times the attention work of the (B, L) layout),
which is a kernel difference (flash-attention's varlen path has no such cost), not a trainer one.
Throughput is real (non-padding, prompt + target) tokens per second of training steps, the first
steps (warm-up) excluded. Each trainer runs in its own process(es). Prints the padding fractions and
tokens/s, `ratio_vs_trl=ours/trl`, then `ratio=ours/hf` as the last line.

TRL is a benchmark-only dependency: pip install trl==1.16.0

    python benchmarks/bench_trainer.py [--rows 600] [--ranks 1] [--micro-batch-tokens 4096]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WARMUP_STEPS = 2
WORDS = ["the", "of", "and", "to", "in", "is", "was", "for", "on", "that", "with", "as", "by", "at", "from", "his", "an", "were", "are", "which", "this", "be", "or", "had"]
TRL_PIN = "trl==1.16.0"


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
            "padding": summary["padding_fraction"], "steps": len(steps), "tokens": summary["train_tokens"]}


class Meter:
    """Times each optimizer step (a Trainer callback) and counts the real and computed tokens of each batch."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.step_tokens: list[int] = []
        self.real = self.computed = 0

    def counting(self, collate):
        """`collate` that also counts: an item's input_ids are its real tokens (rows, or a packed bin of rows)."""

        def wrapped(items):
            out = collate(items)
            real = sum(len(item["input_ids"]) for item in items)
            self.real += real
            self.computed += out["input_ids"].numel()
            self.step_tokens.append(real)
            return out

        return wrapped

    def callback(self):
        from transformers import TrainerCallback

        times = self.times

        class Timer(TrainerCallback):
            def on_step_begin(self, *a, **k):
                self.t0 = time.perf_counter()

            def on_step_end(self, *a, **k):
                times.append(time.perf_counter() - self.t0)

        return Timer()

    def write(self, path: Path, **extra) -> None:
        """Rank 0 writes tokens/s (warm-up steps excluded), padding fraction and step count to `path`."""
        if int(os.environ.get("RANK", "0")) != 0:
            return
        # the dataloader of each rank runs ahead by a batch or two; time the steps, count their tokens
        n = min(len(self.times), len(self.step_tokens))
        tokens = sum(self.step_tokens[WARMUP_STEPS:n]) * int(os.environ.get("WORLD_SIZE", "1"))
        result = {"tokens_per_s": tokens / sum(self.times[WARMUP_STEPS:n]), "padding": 1 - self.real / self.computed,
                  "steps": len(self.times), **extra}
        path.write_text(json.dumps(result))


def baseline_setup(work: Path, args_class, name: str, batch: int, **extra):
    """What the HF and TRL runs share: (training arguments of `args_class`, model, step meter).

    Same ZeRO-3 JSON, fp32, sdpa, no gradient checkpointing, lr, seed and epochs as s3ft. The arguments
    are built before the model, so from_pretrained sees the ZeRO-3 config and partitions at load.
    """
    import deepspeed
    import torch
    from transformers import AutoModelForCausalLM

    deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo")  # before ZeRO-3 init
    ds_config = json.loads((Path(__file__).resolve().parents[1] / "configs" / "deepspeed" / "zero3.json").read_text())
    targs = args_class(
        output_dir=str(work / name), per_device_train_batch_size=batch, num_train_epochs=1, learning_rate=1e-4,
        deepspeed=ds_config, bf16=False, report_to=[], save_strategy="no", logging_steps=10**9,
        dataloader_num_workers=0, gradient_checkpointing=False, seed=0,
        use_cpu=not torch.cuda.is_available(), disable_tqdm=True, **extra,
    )
    model = AutoModelForCausalLM.from_pretrained(work / "model", dtype=torch.float32, attn_implementation="sdpa")
    model.config.use_cache = False
    return targs, model, Meter()


def hf_worker(work: Path, args: argparse.Namespace) -> None:
    """One rank of the HF Trainer run (started under torchrun) on s3ft's tokenized rows; rank 0 writes hf.json."""
    import numpy as np
    from transformers import AutoTokenizer, DataCollatorForSeq2Seq, Trainer, TrainingArguments

    from s3ft.train.tokenize import TokenizedSet

    data = TokenizedSet.load(work / "ours" / "train" / "train_rows")
    features = []
    for i in range(len(data)):
        ids = data.row(i).astype(np.int64).tolist()
        labels = [-100] * int(data.prompt_lens[i]) + ids[int(data.prompt_lens[i]):]
        features.append({"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels})
    batch = max(1, round(args.micro_batch_tokens / float(data.lengths().mean())))
    targs, model, meter = baseline_setup(work, TrainingArguments, "hf", batch, remove_unused_columns=False)
    collate = DataCollatorForSeq2Seq(AutoTokenizer.from_pretrained(work / "model"), padding=True,
                                     label_pad_token_id=-100)
    trainer = Trainer(model=model, args=targs, train_dataset=features, data_collator=meter.counting(collate),
                      callbacks=[meter.callback()])
    trainer.train()
    meter.write(work / "hf.json", batch_size=batch, tokens=meter.real)


def trl_worker(work: Path, args: argparse.Namespace) -> None:
    """One rank of the TRL SFTTrainer run with packing on the merged rows; rank 0 writes trl.json."""
    import trl
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import SFTConfig, SFTTrainer
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    from s3ft.train.tokenize import TokenizedSet

    rows = [json.loads(x) for x in (work / "ours" / "data" / "merged.jsonl").read_text().splitlines()]
    # conversational prompt-completion rows: the prompt is rendered as s3ft renders it, the loss is on the completion
    dataset = Dataset.from_list([
        {"prompt": r["messages"], "completion": [{"role": "assistant", "content": r["target"]}]} for r in rows
    ])
    longest = int(TokenizedSet.load(work / "ours" / "train" / "train_rows").lengths().max())
    seq_len = min(args.micro_batch_tokens, longest)  # s3ft's packed sequence length
    batch = max(1, args.micro_batch_tokens // seq_len)
    targs, model, meter = baseline_setup(work, SFTConfig, "trl", batch, packing=True, packing_strategy="bfd",
                                         max_length=seq_len)
    trainer = SFTTrainer(model=model, args=targs, train_dataset=dataset,
                         processing_class=AutoTokenizer.from_pretrained(work / "model"), callbacks=[meter.callback()])
    collate = trainer.data_collator  # TRL refuses a custom collator with packing, so it is replaced after
    if args.trl_layout == "batch":
        collate = batch_layout(DataCollatorForLanguageModeling(pad_token_id=collate.pad_token_id,
                                                               return_position_ids=True))
    trainer.data_collator = meter.counting(collate)
    trainer.train()
    meter.write(work / "trl.json", batch_size=batch, max_length=seq_len, tokens=meter.real, layout=args.trl_layout,
                version=trl.__version__)


def batch_layout(collate):
    """TRL's collator without padding-free: (packed sequences, length), positions restarting at every row, and no
    attention mask, so transformers keeps rows apart from the position ids, as for s3ft's batches."""

    def wrapped(items):
        out = collate(items)
        out.pop("attention_mask")
        return out

    return wrapped


def run_baseline(kind: str, work: Path, args: argparse.Namespace) -> dict:
    """Run `kind` (hf or trl) under torchrun with `--ranks` ranks; returns what its rank 0 wrote."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={args.ranks}",
           __file__, "--worker", kind, "--work", str(work), "--micro-batch-tokens", str(args.micro_batch_tokens),
           "--trl-layout", args.trl_layout]
    subprocess.run(cmd, check=True)
    return json.loads((work / f"{kind}.json").read_text())


def _on_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=600)
    parser.add_argument("--ranks", type=int, default=1)
    parser.add_argument("--micro-batch-tokens", type=int, default=4096)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--trl-layout", choices=["batch", "padding-free"], default="batch",
                        help="TRL's batches: (B, L) as s3ft's (matched), or TRL's padding-free single sequence")
    parser.add_argument("--worker", choices=["hf", "trl"], help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        {"hf": hf_worker, "trl": trl_worker}[args.worker](args.work, args)
        return
    if importlib.util.find_spec("trl") is None:
        sys.exit(f"bench_trainer: TRL is not installed (a benchmark-only dependency); run: pip install {TRL_PIN}")

    from s3ft.models.tiny import build_tiny_model

    with tempfile.TemporaryDirectory(prefix="bench_trainer_") as tmp:
        work = Path(tmp)
        build_tiny_model(work / "model", hidden_size=args.hidden, num_layers=args.layers)
        (work / "ours" / "data").mkdir(parents=True)
        rows = make_rows(args.rows)
        (work / "ours" / "data" / "merged.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        ours = run_ours(work, args)
        hf = run_baseline("hf", work, args)
        trl = run_baseline("trl", work, args)
    print(f"CPU: {os.cpu_count()} cores, fp32, sdpa, no gradient checkpointing" if not _on_gpu() else "GPU")
    print(f"rows={args.rows} ranks={args.ranks} micro_batch_tokens={args.micro_batch_tokens} "
          f"hf_batch_size={hf['batch_size']}")
    print(f"padding_fraction ours={ours['padding']:.3f} hf={hf['padding']:.3f}")
    print(f"tokens_per_s ours={ours['tokens_per_s']:.0f} hf={hf['tokens_per_s']:.0f} "
          f"(steps ours={ours['steps']} hf={hf['steps']})")
    print(f"trl={trl['version']} SFTTrainer packing=True packing_strategy=bfd layout={trl['layout']} "
          f"({'matched: (B, L) for both' if trl['layout'] == 'batch' else 'TRL one sequence vs our (B, L)'}) "
          f"max_length={trl['max_length']} batch_size={trl['batch_size']} "
          f"tokens trained ours={ours['tokens']} trl={trl['tokens']}")
    print(f"padding_fraction trl={trl['padding']:.3f}")
    print(f"tokens_per_s trl={trl['tokens_per_s']:.0f} (steps trl={trl['steps']})")
    print(f"ratio_vs_trl={ours['tokens_per_s'] / trl['tokens_per_s']:.2f}")
    print(f"ratio={ours['tokens_per_s'] / hf['tokens_per_s']:.2f}")


if __name__ == "__main__":
    main()
