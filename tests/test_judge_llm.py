"""The LLM judge: its verdict parser on hand-written replies, and the whole path on NQ-open rows
with a tiny judge model (memorised replies, so the expected verdicts are known)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from s3ft.cli import main
from s3ft.judges.llm import parse_verdict
from tests.paths import shared_file


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ("correct", True),
        ("The prediction names the same city.\nCorrect.", True),
        ("Reasoning...\n\nVerdict: incorrect", False),
        ("**Final verdict: Yes**", True),
        ("1", True),
        ("0", False),
        ("no", False),
        ("The answer is not correct\nNot correct", False),
        ("It says correct things\nbut I am unsure", None),  # the last line is no verdict
        ("", None),
        ("correct\nincorrect", False),  # the final line decides
        ("correctly", None),
    ],
)
def test_parse_verdict(reply: str, expected: bool | None) -> None:
    assert parse_verdict(reply) is expected


TEMPLATE = "J {question} | {gold} | {response}"


@pytest.mark.slow
def test_llm_judge_end_to_end_on_nq_open(tmp_path: Path, ray_session: None) -> None:
    from s3ft.models.resolve import load_tokenizer, render_prompt
    from s3ft.models.tiny import build_tiny_model
    from tests.tiny_training import memorize

    rows = [json.loads(line) for line in shared_file("nq_open", "dev.jsonl").read_text().splitlines()[:3]]
    judged = [
        {"question": rows[0]["question"], "answers": rows[0]["answer"], "gold": rows[0]["answer"][0],
         "response": rows[0]["answer"][0]},
        {"question": rows[1]["question"], "answers": rows[1]["answer"], "gold": rows[1]["answer"][0],
         "response": "banana"},
        {"question": rows[2]["question"], "answers": rows[2]["answer"], "gold": rows[2]["answer"][0],
         "response": "no idea"},
        {"question": "no gold here", "response": "x"},  # cannot be judged: an error row
    ]
    replies = ["correct", "incorrect", "hmm"]  # the third is unparseable: incorrect, and counted
    model = build_tiny_model(tmp_path / "judge")
    tokenizer = load_tokenizer(str(model))
    texts = []
    for row, reply in zip(judged, replies):
        gold = " | ".join(row["answers"])
        prompt = TEMPLATE.format(question=row["question"], gold=gold, response=row["response"])
        texts.append(render_prompt(tokenizer, [{"role": "user", "content": prompt}]) + reply + "</s>")
    memorize(model, texts, steps=300)

    src, dst = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in judged))
    args = ["judge", "llm", "--input", str(src), "--output", str(dst),
            "--set", f"judge.llm.model.path={model}", "--set", f"judge.llm.template={TEMPLATE}",
            "--set", "judge.llm.generation.max_tokens=12", "--set", "judge.llm.audit_with=qa"]
    assert main(args) == 0
    out = [json.loads(line) for line in dst.read_text().splitlines()]
    assert [r["correct"] for r in out] == [True, False, False, False]
    assert out[0]["reason"] == "llm judge: correct" and out[1]["reason"] == "llm judge: incorrect"
    assert out[2]["reason"].startswith("unparseable verdict")
    assert out[3]["reason"].startswith("error: missing field")
    # the audit: the qa rule judge's verdict on the same rows (exact match)
    assert [r.get("audit") for r in out] == [True, False, False, None]
