"""The data plan: which rows go into which micro batch of which step on which rank, and the tensors.

The plan is a pure function of the rows, the seed and the batching settings, so every rank computes
the same plan without talking, and a resumed run continues at step k of the very same plan (no row
trained twice, none skipped).

A micro batch is a few sequences padded to the longest one, at most `micro_batch_tokens` tokens in
all (padding counts). With packing, a sequence holds several whole rows (first-fit, up to the
longest row's length) and position ids restart at every row, which makes transformers' sdpa, eager
and flex paths keep attention inside each row (a block-diagonal mask per sequence); without it, a
sequence is one row. Flash-attention kernels only split rows in a batch of one sequence, so for them a
micro batch is `flatten`ed into one, and its rows' boundaries go to the model with it. Padding goes at the end of a sequence
and its positions continue, so causal attention never lets a real token see it, no attention mask is
needed, and a position 0 always starts a row. Steps whose last micro batches run out of rows get
empty ("dummy") micro batches: one token, no loss, so every rank still runs the same forwards.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np
import torch

from s3ft.models.chat import IGNORE
from s3ft.train.tokenize import TokenizedSet

OPEN_BINS = 64  # first-fit looks this many bins back: near-optimal packing in linear time


Sequence = tuple[int, ...]  # row indices packed into one sequence (one row without packing)
MicroBatch = tuple[Sequence, ...]  # sequences padded to the longest; () is a dummy


@dataclass(frozen=True)
class Step:
    """One optimizer step: `world_size * grad_accum` micro batches."""

    epoch: int
    micro_batches: tuple[MicroBatch, ...]
    target_tokens: int  # loss-bearing tokens in the whole step, over all ranks

    def for_rank(self, rank: int, world_size: int) -> list[MicroBatch]:
        return list(self.micro_batches[rank::world_size])

    def rows(self) -> list[int]:
        return [r for mb in self.micro_batches for seq in mb for r in seq]


def pack(lengths: np.ndarray, order: np.ndarray, capacity: int) -> list[list[int]]:
    """First-fit packing of rows (in `order`) into sequences of at most `capacity` tokens, looking back over
    the last OPEN_BINS sequences only (linear time; a million rows plan in about a second).

    >>> pack(np.array([5, 4, 3, 2]), np.arange(4), capacity=7)
    [[0, 3], [1, 2]]
    """
    sizes = lengths.tolist()
    bins: list[list[int]] = []
    room: list[int] = []
    first_open = 0
    bound = 0  # at least the most room left in an open sequence: rows larger than it skip the scan
    for i in order.tolist():
        n = sizes[i]
        if bound >= n:
            b = first_open
            while b < len(room) and room[b] < n:
                b += 1
            if b < len(room):
                bins[b].append(i)
                room[b] -= n
                continue
            bound = max(room[first_open:])  # the bound was stale: make it exact, then open a sequence
        bins.append([i])
        room.append(capacity - n)
        bound = max(bound, capacity - n)
        first_open = max(first_open, len(bins) - OPEN_BINS)
    return bins


def group(seqs: list[list[int]], seq_lens: list[int], budget: int) -> list[MicroBatch]:
    """Consecutive sequences while (sequences x longest) stays within `budget` tokens."""
    out: list[MicroBatch] = []
    current: list[tuple[int, ...]] = []
    longest = 0
    for seq, n in zip(seqs, seq_lens):
        if current and (len(current) + 1) * max(longest, n) > budget:
            out.append(tuple(current))
            current, longest = [], 0
        current.append(tuple(seq))
        longest = max(longest, n)
    if current:
        out.append(tuple(current))
    return out


def epoch_micro_batches(data: TokenizedSet, epoch: int, seed: int, budget: int, packing: bool) -> list[MicroBatch]:
    lengths = data.lengths()
    order = np.random.default_rng([seed, epoch]).permutation(len(data))
    if packing:
        seqs = pack(lengths, order, capacity=min(budget, int(lengths.max())))
        starts = np.cumsum([0] + [len(s) for s in seqs[:-1]])
        seq_lens = np.add.reduceat(lengths[np.concatenate(seqs)], starts).tolist()
    else:
        seqs = [[i] for i in order.tolist()]
        seq_lens = lengths[order].tolist()
    return group(seqs, seq_lens, budget)


def packed(rows) -> MicroBatch:
    """All `rows` in one sequence."""
    return (tuple(rows),)


def padded(rows) -> MicroBatch:
    """Each of `rows` its own sequence."""
    return tuple((r,) for r in rows)


def plan_steps(
    data: TokenizedSet,
    *,
    world_size: int,
    grad_accum: int,
    budget: int,
    packing: bool,
    seed: int,
    epochs: float,
    max_steps: int = 0,
) -> list[Step]:
    """Every step of the run; `max_steps > 0` cycles epochs until that many steps exist."""
    per_step = world_size * grad_accum
    targets = data.lengths() - np.maximum(data.prompt_lens, 1)  # positions whose label is a target token
    steps: list[Step] = []
    epoch = 0
    while True:
        mbs = epoch_micro_batches(data, epoch, seed, budget, packing)
        n_steps = math.ceil(len(mbs) / per_step)
        if not max_steps and epoch + 1 > epochs:  # a fractional last epoch
            n_steps = max(1, math.ceil(n_steps * (epochs - epoch)))
        for s in range(n_steps):
            chunk = list(mbs[s * per_step : (s + 1) * per_step])
            chunk += [()] * (per_step - len(chunk))  # the epoch's last step: dummies fill the empty slots
            rows = [r for mb in chunk for seq in mb for r in seq]
            steps.append(Step(epoch, tuple(chunk), int(targets[rows].sum())))
            if max_steps and len(steps) == max_steps:
                return steps
        epoch += 1
        if not max_steps and epoch >= epochs:
            return steps


def plan_fingerprint(steps: list[Step], data: TokenizedSet) -> str:
    """A hash of which row ids each step trains: a checkpoint only resumes the very same plan."""
    h = hashlib.sha256()
    for step in steps:
        for mb in step.micro_batches:
            h.update(("/".join("|".join(data.ids[i] for i in seq) for seq in mb) + "\n").encode())
        h.update(b"#")
    return h.hexdigest()[:16]


def collate(data: TokenizedSet, mb: MicroBatch, *, pad_id: int) -> dict:
    """Tensors for one micro batch. `labels[t]` is the token that position t predicts (already shifted)."""
    if not mb:  # dummy: one token, nothing to learn
        one = torch.tensor([[pad_id]], dtype=torch.long)
        return {"input_ids": one, "position_ids": torch.zeros_like(one), "labels": torch.full_like(one, IGNORE)}
    seqs, labels, positions = [], [], []
    for seq in mb:
        rows = [torch.from_numpy(data.row(i).astype(np.int64)) for i in seq]
        seqs.append(torch.cat(rows))
        labels.append(torch.cat([_shifted_labels(r, int(data.prompt_lens[i])) for r, i in zip(rows, seq)]))
        positions.append(torch.cat([torch.arange(len(r)) for r in rows]))
    longest = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), longest), pad_id, dtype=torch.long)
    lab = torch.full((len(seqs), longest), IGNORE, dtype=torch.long)
    pos = torch.empty((len(seqs), longest), dtype=torch.long)
    for k, (s, y, p) in enumerate(zip(seqs, labels, positions)):
        n = len(s)
        ids[k, :n], lab[k, :n], pos[k, :n] = s, y, p
        pos[k, n:] = torch.arange(p[-1] + 1, p[-1] + 1 + longest - n)  # padding continues the last row
    return {"input_ids": ids, "position_ids": pos, "labels": lab}


def flatten(batch: dict) -> dict:
    """The micro batch's sequences back to back as one (1, B*L) sequence, with its rows' boundaries, for
    flash-attention kernels: they run varlen attention over one sequence only, and with `cu_seq_lens_q/k`
    and `max_length_q/k` given no attention layer derives the boundaries again (a host sync per layer,
    forward and recompute). The boundaries are computed here, on the CPU, where the batch is built.

    >>> b = flatten({"input_ids": torch.zeros(2, 3), "position_ids": torch.tensor([[0, 1, 0], [0, 1, 2]])})
    >>> b["cu_seq_lens_q"].tolist(), b["max_length_q"]
    ([0, 2, 3, 6], 3)
    """
    flat = {k: v.reshape(1, -1) for k, v in batch.items()}
    positions = flat["position_ids"][0]
    starts = torch.nonzero(positions == 0).flatten()  # every row starts at position 0; padding continues the last
    cu_seq_lens = torch.cat([starts, torch.tensor([positions.numel()])]).to(torch.int32)
    max_length = int(cu_seq_lens.diff().max())
    return {**flat, "cu_seq_lens_q": cu_seq_lens, "cu_seq_lens_k": cu_seq_lens, "max_length_q": max_length,
            "max_length_k": max_length}


def _shifted_labels(seq: torch.Tensor, prompt_len: int) -> torch.Tensor:
    labels = torch.full_like(seq, IGNORE)
    labels[:-1] = seq[1:]
    labels[: max(prompt_len - 1, 0)] = IGNORE  # positions predicting prompt tokens
    return labels


def padding_fraction(data: TokenizedSet, steps: list[Step]) -> float:
    """Share of the computed token slots that are padding or dummies."""
    lengths = data.lengths()
    real = computed = 0
    for step in steps:
        for mb in step.micro_batches:
            if not mb:
                computed += 1
                continue
            seq_lens = [int(lengths[list(seq)].sum()) for seq in mb]
            real += sum(seq_lens)
            computed += max(seq_lens) * len(seq_lens)
    return 1 - real / max(computed, 1)
