"""Merged rows to token ids, through the one chat renderer (`s3ft.models.chat`): the prompt exactly as
generation rendered it, then the target and EOS, which alone carry loss.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from s3ft.errors import DataError
from s3ft.models.chat import Messages, encode_examples

ARRAYS = ("ids", "tokens", "offsets", "prompt_lens")


@dataclass
class TokenizedSet:
    """Rows as one flat token array: row i is tokens[offsets[i]:offsets[i+1]], its first prompt_lens[i] are prompt.

    Saved as one .npy file per array in a folder; `load` memory-maps them, so every rank of a node reads
    the same pages from the page cache instead of holding its own copy of the dataset."""

    ids: np.ndarray  # str (numpy unicode), one per row
    tokens: np.ndarray  # int32, all rows back to back
    offsets: np.ndarray  # int64, len(ids) + 1
    prompt_lens: np.ndarray  # int32

    def __len__(self) -> int:
        return len(self.ids)

    def row(self, i: int) -> np.ndarray:
        return self.tokens[self.offsets[i] : self.offsets[i + 1]]

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def target_tokens(self, i: int) -> int:
        return int(self.offsets[i + 1] - self.offsets[i] - self.prompt_lens[i])

    def subset(self, index: list[int] | np.ndarray) -> TokenizedSet:
        index = np.asarray(index, dtype=np.int64)
        rows = [self.row(i) for i in index]
        lens = np.array([len(r) for r in rows], dtype=np.int64)
        return TokenizedSet(
            ids=self.ids[index],
            tokens=np.concatenate(rows).astype(np.int32) if rows else np.zeros(0, np.int32),
            offsets=np.concatenate([[0], np.cumsum(lens)]).astype(np.int64),
            prompt_lens=self.prompt_lens[index].astype(np.int32),
        )

    def save(self, folder: Path | str) -> None:
        """One .npy per array, each written to a temporary name and renamed: a reader never sees half a file."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        for name in ARRAYS:
            tmp = folder / f"{name}.{os.getpid()}.tmp.npy"
            np.save(tmp, np.asarray(getattr(self, name)))
            tmp.replace(folder / f"{name}.npy")

    @classmethod
    def load(cls, folder: Path | str) -> TokenizedSet:
        """The saved arrays, memory-mapped read-only (nothing is copied into this process)."""
        return cls(**{name: np.load(Path(folder) / f"{name}.npy", mmap_mode="r") for name in ARRAYS})


@dataclass
class TokenizeStats:
    rows: int = 0
    truncated: int = 0
    dropped: int = 0
    dropped_ids: list[str] = field(default_factory=list)


def read_merged(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, row) for each non-blank line of a merged JSONL file."""
    if not path.is_file():
        raise DataError("merged training rows not found (run the data stages first)", file=str(path))
    with path.open() as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"not valid JSON: {exc.msg}", file=str(path), line=lineno) from None
            if not isinstance(row, dict):
                raise DataError("a row must be a JSON object", file=str(path), line=lineno)
            yield lineno, row


def row_prompt(row: dict[str, Any], *, file: str, line: int) -> Messages | str:
    """The row's prompt as the data engine stored it: a chat list (`messages`) or a plain `prompt` string."""
    messages = row.get("messages")
    if messages is None:
        prompt = row.get("prompt")
        if not isinstance(prompt, str):
            raise DataError("row needs 'messages' (chat list) or 'prompt' (string)", file=file, line=line,
                            field="messages")
        return prompt
    if not isinstance(messages, list) or not all(isinstance(m, dict) and "content" in m for m in messages):
        raise DataError("'messages' must be a list of {role, content}", file=file, line=line, field="messages")
    return messages


def encode_row(tokenizer, row: dict[str, Any], *, file: str, line: int) -> tuple[list[int], list[int]]:
    """(prompt ids, target ids + EOS)."""
    return encode_batch(tokenizer, [(line, row)], file=file)[0]


def encode_batch(tokenizer, rows: list[tuple[int, dict[str, Any]]], *, file: str) -> list[tuple[list[int], list[int]]]:
    """encode_row for many rows at once."""
    prompts, targets = [], []
    for line, row in rows:
        target = row.get("target")
        if not isinstance(target, str):
            raise DataError("row needs a string 'target'", file=file, line=line, field="target")
        prompts.append(row_prompt(row, file=file, line=line))
        targets.append(target)
    return encode_examples(tokenizer, prompts, targets)


def tokenize_rows(tokenizer, path: Path, *, max_seq_len: int, truncation: str,
                  chunk: int = 1024) -> tuple[TokenizedSet, TokenizeStats]:
    """Tokenize every row of `path`, applying the truncation policy; raises DataError on bad rows."""
    ids: list[str] = []
    seqs: list[np.ndarray] = []
    prompt_lens: list[int] = []
    stats = TokenizeStats()
    too_long: list[tuple[int, int]] = []
    seen: set[str] = set()
    pending: list[tuple[int, dict[str, Any]]] = []

    def flush() -> None:
        for (lineno, row), (prompt, target) in zip(pending, encode_batch(tokenizer, pending, file=str(path))):
            stats.rows += 1
            total = len(prompt) + len(target)
            if total > max_seq_len:
                if truncation == "error":
                    too_long.append((lineno, total))
                    continue
                if truncation == "drop":
                    stats.dropped += 1
                    stats.dropped_ids.append(str(row["id"]))
                    continue
                stats.truncated += 1
                cut = total - max_seq_len
                if cut >= len(prompt):
                    target, prompt = target[cut - len(prompt):], []
                else:
                    prompt = prompt[cut:]
            ids.append(str(row["id"]))
            seqs.append(np.asarray(prompt + target, dtype=np.int32))
            prompt_lens.append(len(prompt))
        pending.clear()

    for lineno, row in read_merged(path):
        row.setdefault("id", f"line-{lineno}")
        if str(row["id"]) in seen:
            raise DataError(f"duplicate id '{row['id']}'", file=str(path), line=lineno, field="id")
        seen.add(str(row["id"]))
        pending.append((lineno, row))
        if len(pending) >= chunk:
            flush()
    flush()
    if too_long:
        first, n = too_long[0]
        raise DataError(
            f"{len(too_long)} row(s) exceed train.max_seq_len={max_seq_len} tokens (this one: {n}); "
            "raise max_seq_len or set train.truncation to truncate_left or drop",
            file=str(path), line=first,
        )
    if not ids:
        raise DataError(
            "no rows to train on" + (f" ({stats.dropped} dropped as too long)" if stats.dropped else ""), file=str(path)
        )
    lens = np.array([len(c) for c in seqs], dtype=np.int64)
    data = TokenizedSet(np.array(ids, dtype=str), np.concatenate(seqs), np.concatenate([[0], np.cumsum(lens)]).astype(np.int64),
                        np.array(prompt_lens, dtype=np.int32))
    return data, stats


def split_eval(data: TokenizedSet, fraction: float, seed: int) -> tuple[TokenizedSet, TokenizedSet | None]:
    """Hold out rows by a hash of (seed, id): stable when rows are added, reordered or the run resumes."""
    if fraction <= 0 or len(data) < 2:
        return data, None
    score = [int.from_bytes(hashlib.sha256(f"{seed}:{i}".encode()).digest()[:8], "big") / 2**64 for i in data.ids]
    held = [k for k, s in enumerate(score) if s < fraction]
    if not held:
        held = [int(np.argmin(score))]
    if len(held) == len(data):
        held = held[:-1]
    held_set = set(held)
    train = [k for k in range(len(data)) if k not in held_set]
    return data.subset(train), data.subset(held)
