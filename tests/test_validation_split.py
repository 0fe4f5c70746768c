"""The validation split carved from the training set, and the base model's score cache."""

from __future__ import annotations

import json
from pathlib import Path

from s3ft.data.split import carve
from s3ft.eval.base_cache import cached
from s3ft.runtime.shards import ShardStore


def _loaded(root: Path, rows: int, shard_size: int) -> ShardStore:
    store = ShardStore(root, "load", f"k{shard_size}")
    ids = [f"row-{i}" for i in range(rows)]
    chunks = [ids[i:i + shard_size] for i in range(0, rows, shard_size)]
    for index, chunk in enumerate(chunks):
        store.write(index, [{"id": i, "question": i} for i in chunk])
    store.finish(len(chunks), rows, 0.0, input_rows=rows, rejected=0)
    return store


def test_carve_holds_out_the_same_rows_whatever_the_sharding(tmp_path: Path) -> None:
    held = []
    for shard_size in (7, 64):
        loaded = _loaded(tmp_path, 100, shard_size)
        train, validation = carve(loaded, ShardStore(tmp_path, "carve", f"c{shard_size}"), 12, shard_size)
        train_ids = [row["id"] for row in train.rows()]
        val_ids = {row["id"] for row in validation}
        assert len(val_ids) == 12 and len(train_ids) == 88 and not val_ids & set(train_ids)
        assert train_ids == [f"row-{i}" for i in range(100) if f"row-{i}" not in val_ids]  # order kept
        assert train.manifest["validation_rows"] == 12 and train.manifest["input_rows"] == 100
        held.append(val_ids)
    assert held[0] == held[1]
    assert held[0] != {f"row-{i}" for i in range(12)}  # a hash sample, not the first rows


def test_base_scores_are_computed_once_per_key(tmp_path: Path) -> None:
    calls = []

    def compute(out: Path) -> dict:
        calls.append(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text('{"id": 1}\n')
        return {"test": {"accuracy": 0.5, "n": 2}}

    cache = tmp_path / "cache"
    first, second = tmp_path / "run1" / "eval" / "rows.jsonl", tmp_path / "run2" / "eval" / "rows.jsonl"
    assert cached(cache, "k1", lambda: compute(first), [first]) == {"test": {"accuracy": 0.5, "n": 2}}
    assert cached(cache, "k1", lambda: compute(second), [second]) == {"test": {"accuracy": 0.5, "n": 2}}
    assert calls == [first]
    assert second.read_text() == '{"id": 1}\n'  # the per-row outputs come with the scores
    assert json.loads((cache / "k1" / "scores.json").read_text())["test"]["n"] == 2
    cached(cache, "k2", lambda: compute(second), [second])
    assert calls == [first, second]
    assert cached(None, "k1", lambda: compute(first), [first]) and len(calls) == 3  # cache off: always computed
