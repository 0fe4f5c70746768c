"""One chat renderer: the tokens a model is trained on after its prompt are the tokens it generated from.

For every task's templates, with and without a system prompt, the data engine's prompt (as the backends
tokenize it) equals the training row's prompt tokens exactly, and the loss falls on the target and EOS only.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from s3ft.data.prompts import Templates, load_templates
from s3ft.data.tasks import TASKS, generic_fields, make_example
from s3ft.errors import ModelError
from s3ft.models.chat import IGNORE, render_prompt
from s3ft.models.tiny import build_char_tokenizer
from s3ft.train.batching import collate
from s3ft.train.tokenize import tokenize_rows

DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets"
MBPP_ROW = {"text": "Write a function to add two numbers.", "code": "def add(a, b):\n    return a + b",
            "test_list": ["assert add(1, 2) == 3", "assert add(-1, 1) == 0"]}
GENERIC_ROW = {"prompt": "Name a prime.", "response": "7 is prime."}


def first_row(task: str) -> dict:
    if task == "mbpp":
        return dict(MBPP_ROW)
    path = {"gsm8k": "gsm8k/train.jsonl", "humaneval": "humaneval/HumanEval.jsonl", "nq_open": "nq_open/dev.jsonl"}
    with (DATASETS / path[task]).open() as fh:
        return json.loads(fh.readline())


def examples(system: str | None) -> list[dict]:
    out = []
    for task in [*TASKS, "generic"]:
        templates = load_templates(task)
        templates = Templates(templates.prompt, templates.paraphrase, system)
        fields = (generic_fields(dict(GENERIC_ROW), "prompt", "response", "messages") if task == "generic"
                  else TASKS[task](first_row(task)))
        out.append(make_example(fields, f"{task}-0", templates))
    return out


def training_rows(tmp_path: Path, tokenizer, rows: list[dict]):
    merged = tmp_path / "merged.jsonl"
    merged.write_text("".join(json.dumps(row) + "\n" for row in rows))
    data, _ = tokenize_rows(tokenizer, merged, max_seq_len=100_000, truncation="error")
    return data


@pytest.mark.parametrize("system", [None, "You are a careful assistant."])
def test_training_prompt_tokens_are_the_generation_prompt_tokens(tmp_path: Path, system: str | None) -> None:
    tokenizer = build_char_tokenizer()
    rows = [{**ex, "target": f"answer of {ex['id']}"} for ex in examples(system)]
    data = training_rows(tmp_path, tokenizer, rows)
    eos = tokenizer.eos_token_id
    for i, row in enumerate(rows):
        generated_from = tokenizer(render_prompt(tokenizer, row["messages"]), add_special_tokens=False)["input_ids"]
        tokens, prompt_len = data.row(i).tolist(), int(data.prompt_lens[i])
        assert tokens[:prompt_len] == generated_from, row["id"]
        assert tokens[prompt_len:] == tokenizer(row["target"], add_special_tokens=False)["input_ids"] + [eos]
        if system:
            assert system in tokenizer.decode(generated_from)
        # The loss: positions whose label is not IGNORE predict exactly the target and EOS.
        labels = collate(data, [[i]], pad_id=tokenizer.pad_token_id)["labels"][0].tolist()
        learned = [y for y in labels if y != IGNORE]
        assert learned == tokens[prompt_len:]
        assert labels.index(learned[0]) == prompt_len - 1  # the last prompt position predicts the first target token


def test_a_tokenizer_without_a_chat_template(tmp_path: Path) -> None:
    """Chat lists are refused on both sides alike; a plain string prompt is taken as it is on both."""
    tokenizer = build_char_tokenizer()
    tokenizer.chat_template = None
    row = examples(None)[0]
    with pytest.raises(ModelError, match="no chat template"):
        render_prompt(tokenizer, row["messages"])
    with pytest.raises(ModelError, match="no chat template"):
        training_rows(tmp_path, tokenizer, [{**row, "target": "x"}])
    plain = {"id": "p", "prompt": "Q: 2+2?\nA:", "target": " 4"}
    data = training_rows(tmp_path, tokenizer, [plain])
    assert data.row(0).tolist()[: int(data.prompt_lens[0])] == tokenizer(
        render_prompt(tokenizer, plain["prompt"]), add_special_tokens=False)["input_ids"]
    assert render_prompt(tokenizer, plain["prompt"]) == plain["prompt"]
