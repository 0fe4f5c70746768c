"""Peak memory of one training step with a 128k vocabulary: the trainer's chunked loss against full logits.

A Llama with Llama-3's vocabulary (128,256) and an otherwise small body (hidden 64, 2 layers: the
vocabulary is what is measured) takes one step on a micro batch of 8,192 tokens (16 rows of 512, the
first half of each a prompt, so half the positions carry a label): forward, backward, AdamW, with
gradient checkpointing as the trainer has it by default. `chunked` is `s3ft.train.loss.nll_sum` (the
head on labelled positions only, a chunk at a time); `full` is the same loss from full logits and an
fp32 cross-entropy, the trainer's loss before. Each variant runs in a fresh process and reports its
peak resident memory (ru_maxrss), so the two figures include the same interpreter, torch and model.
On a CPU machine this is host memory; on a GPU the same ratio holds for device memory.
Prints both peaks and, last, `ratio=chunked/full` (target <= 0.4).

    python benchmarks/bench_loss_memory.py [--tokens 8192] [--vocab 128256]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TARGET = 0.4

STEP = """
import resource, sys, time
import torch
from transformers import LlamaConfig, LlamaForCausalLM
from s3ft.train.loss import full_logits_nll, nll_sum

variant, tokens, vocab = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
torch.manual_seed(0)
config = LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                     num_attention_heads=1, num_key_value_heads=1, head_dim=64, max_position_embeddings=512,
                     tie_word_embeddings=False)
model = LlamaForCausalLM(config).train()
model.config.use_cache = False
model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
rows, length = tokens // 512, 512
ids = torch.randint(0, vocab, (rows, length))
labels = ids.roll(-1, dims=1)
labels[:, : length // 2] = -100
labels[:, -1] = -100
batch = {"input_ids": ids, "position_ids": torch.arange(length).expand(rows, -1), "labels": labels}
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
started = time.perf_counter()
loss = (nll_sum if variant == "chunked" else full_logits_nll)(model, batch)
loss.backward()
optimizer.step()
print("loss", loss.item(), "seconds", time.perf_counter() - started)
print("peak_kib", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def peak_mib(variant: str, tokens: int, vocab: int) -> tuple[float, float, float]:
    """(peak RSS MiB, loss, seconds) of one step of `variant` in a fresh process."""
    done = subprocess.run([sys.executable, "-c", STEP, variant, str(tokens), str(vocab)], check=True, cwd=REPO,
                          capture_output=True, text=True)
    lines = {line.split()[0]: line.split()[1:] for line in done.stdout.splitlines() if line}
    return int(lines["peak_kib"][0]) / 1024, float(lines["loss"][0]), float(lines["loss"][2])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=8192, help="tokens in the micro batch (rows of 512)")
    parser.add_argument("--vocab", type=int, default=128256, help="vocabulary size (Llama-3: 128,256)")
    args = parser.parse_args()
    chunked, loss_c, sec_c = peak_mib("chunked", args.tokens, args.vocab)
    full, loss_f, sec_f = peak_mib("full", args.tokens, args.vocab)
    print(f"one training step, vocab {args.vocab}, {args.tokens}-token micro batch (half labelled), fp32 on CPU")
    print(f"chunked: peak_rss_mib={chunked:.0f} loss={loss_c:.6f} step_s={sec_c:.1f}")
    print(f"full:    peak_rss_mib={full:.0f} loss={loss_f:.6f} step_s={sec_f:.1f}")
    print(f"target <= {TARGET}")
    print(f"ratio={chunked / full:.3f}")


if __name__ == "__main__":
    main()
