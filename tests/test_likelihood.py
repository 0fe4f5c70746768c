"""The likelihood diagnostic: per-token NLL of each source's targets under the base model."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

from s3ft.errors import DataError
from s3ft.eval.likelihood import target_nll

ROWS = [
    {"id": "a", "messages": [{"role": "user", "content": "What is 2+2?"}], "gold": "4",
     "target": "2+2=4. The answer is 4", "source": "self"},
    {"id": "b", "messages": [{"role": "system", "content": "Be brief."},
                             {"role": "user", "content": "Capital of France?"}],
     "gold": "Paris", "target": "It is Paris.", "source": "paraphrase"},
    {"id": "c", "messages": [{"role": "user", "content": "Reverse 'cat'."}], "gold": "tac", "target": "tac",
     "source": "gold"},
    {"id": "d", "messages": [{"role": "user", "content": "What is 3+5?"}], "gold": "8",
     "target": "3+5=8. The answer is 8", "source": "self"},
]


def _write_merged(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _hand_nll(model_dir: Path, rows: list[dict]) -> dict[str, float]:
    """Token-weighted mean NLL of target + EOS after the chat prompt, one unpadded row at a time."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    total: dict[str, float] = {}
    count: dict[str, int] = {}
    for row in rows:
        prompt = tokenizer.apply_chat_template(row["messages"], tokenize=False, add_generation_prompt=True)
        p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        t_ids = tokenizer(row["target"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        ids = p_ids + t_ids
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), dim=-1)
        nll = -sum(float(logp[i - 1, ids[i]]) for i in range(len(p_ids), len(ids)))
        total[row["source"]] = total.get(row["source"], 0.0) + nll
        count[row["source"]] = count.get(row["source"], 0) + len(t_ids)
    return {s: total[s] / count[s] for s in total}


def test_nll_equals_hand_computation(tiny_model_dir: Path, tmp_path: Path) -> None:
    merged = _write_merged(tmp_path / "merged.jsonl", ROWS)
    expected = _hand_nll(tiny_model_dir, ROWS)
    for batch_size in (1, 3):  # batched rows are right-padded: padding must not change a number
        out = target_nll(str(tiny_model_dir), merged, batch_size=batch_size)
        assert out["rows"] == {"self": 2, "paraphrase": 1, "gold": 1}
        assert out["nll"].keys() == expected.keys()
        for source, value in expected.items():
            assert out["nll"][source] == pytest.approx(value, rel=1e-5)
        assert all(3.0 < v < 6.0 for v in out["nll"].values())  # near ln(vocab) for a random model
    capped = target_nll(str(tiny_model_dir), merged, max_rows_per_source=1)
    assert capped["rows"] == {"self": 1, "paraphrase": 1, "gold": 1}
    assert capped["nll"]["self"] == pytest.approx(_hand_nll(tiny_model_dir, ROWS[:1])["self"], rel=1e-5)


@pytest.mark.slow
def test_memorised_source_is_most_likely(tiny_model_dir: Path, tmp_path: Path) -> None:
    from s3ft.models.tiny import build_char_tokenizer
    from tests.tiny_training import memorize

    rows = [
        {"id": f"{source}{k}", "messages": [{"role": "user", "content": f"Question {source} {k}?"}], "gold": "x",
         "target": f"Answer {k} for {source}: {'abcdefgh'[k:] + source[::-1]}", "source": source}
        for source in ("self", "paraphrase", "gold") for k in range(3)
    ]
    tokenizer = build_char_tokenizer()
    taught = tmp_path / "taught"
    shutil.copytree(tiny_model_dir, taught)
    memorize(taught, [
        tokenizer.apply_chat_template(r["messages"], tokenize=False, add_generation_prompt=True) + r["target"] + "</s>"
        for r in rows if r["source"] == "self"
    ], steps=60)
    merged = _write_merged(tmp_path / "merged.jsonl", rows)
    before = target_nll(str(tiny_model_dir), merged, batch_size=4)["nll"]
    after = target_nll(str(taught), merged, batch_size=4)["nll"]
    assert after["self"] < 0.5 * before["self"]
    assert after["self"] < 0.5 * min(after["paraphrase"], after["gold"])
    assert math.isfinite(after["gold"])


def test_rows_without_source_are_refused(tiny_model_dir: Path, tmp_path: Path) -> None:
    merged = _write_merged(tmp_path / "merged.jsonl", [{k: v for k, v in ROWS[0].items() if k != "source"}])
    with pytest.raises(DataError, match="line 1.*'source'"):
        target_nll(str(tiny_model_dir), merged)
    with pytest.raises(DataError, match="not found"):
        target_nll(str(tiny_model_dir), tmp_path / "missing.jsonl")
