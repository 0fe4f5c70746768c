"""How likely the base model finds each source's targets (the paper's Table 1 and Fig. 2).

S3FT's premise: the model's own answers and paraphrases sit close to its distribution, gold answers
far from it, so training on them moves the model less. The evidence is the mean per-token negative
log-likelihood of each target under the base model, grouped by `source`: self < paraphrase < gold.

Rows are tokenized exactly as the trainer does (prompt through the chat template, then target and
EOS; only target and EOS are scored), so the numbers are the training loss the base model starts at.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

from s3ft.errors import DataError
from s3ft.train.tokenize import encode_row, read_merged


def target_nll(
    model_path: str,
    merged_path: str | Path,
    *,
    max_rows_per_source: int | None = None,
    batch_size: int = 8,
    device: str = "cpu",
) -> dict[str, dict[str, Any]]:
    """`{"nll": {source: mean NLL per target token}, "rows": {source: rows scored}}`.

    The mean is over all target tokens of a source (a long target weighs more than a short one);
    `max_rows_per_source` scores only the first rows of each source in file order.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    rows = _encoded_rows(tokenizer, Path(merged_path), max_rows_per_source)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype="auto").to(device).eval()
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    total: dict[str, float] = defaultdict(float)
    tokens: dict[str, int] = defaultdict(int)
    counts: dict[str, int] = defaultdict(int)
    rows.sort(key=lambda r: len(r[1]) + len(r[2]))  # similar lengths together: less padding
    with torch.inference_mode():
        for start in range(0, len(rows), batch_size):
            batch = rows[start : start + batch_size]
            width = max(len(p) + len(t) for _, p, t in batch)
            input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
            labels = torch.full((len(batch), width), -100, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for i, (_, prompt, target) in enumerate(batch):
                ids = prompt + target
                input_ids[i, : len(ids)] = torch.tensor(ids)
                labels[i, len(prompt) : len(ids)] = torch.tensor(target)
                mask[i, : len(ids)] = 1
            logits = model(input_ids=input_ids.to(device), attention_mask=mask.to(device)).logits.float()
            nll = torch.nn.functional.cross_entropy(
                logits[:, :-1].transpose(1, 2), labels[:, 1:].to(device), ignore_index=-100, reduction="none"
            ).cpu()
            for i, (source, _, target) in enumerate(batch):
                total[source] += float(nll[i].sum())
                tokens[source] += len(target)
                counts[source] += 1
    return {"nll": {s: total[s] / tokens[s] for s in counts}, "rows": dict(counts)}


def _encoded_rows(tokenizer: Any, path: Path, limit: int | None) -> list[tuple[str, list[int], list[int]]]:
    """(source, prompt ids, target ids + EOS) per row, at most `limit` rows of each source."""
    rows: list[tuple[str, list[int], list[int]]] = []
    taken: dict[str, int] = defaultdict(int)
    for line, row in read_merged(path):
        source = row.get("source")
        if not isinstance(source, str):
            raise DataError(
                "row needs a 'source' (self, paraphrase or gold)", file=str(path), line=line, field="source"
            )
        if limit is not None and taken[source] >= limit:
            continue
        prompt, target = encode_row(tokenizer, row, file=str(path), line=line)
        if not prompt:  # the first target token would have nothing to be predicted from
            raise DataError("the prompt renders to no tokens", file=str(path), line=line, field="messages")
        rows.append((source, prompt, target))
        taken[source] += 1
    if not rows:
        raise DataError("no rows to score", file=str(path))
    return rows
