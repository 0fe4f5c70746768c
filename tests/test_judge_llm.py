"""The LLM judge: its verdict parser on hand-written replies, and the whole path on NQ-open rows
with a tiny judge model (memorised replies, so the expected verdicts are known)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from s3ft.cli import main
from s3ft.judges.llm import DEFAULT_TEMPLATE, LLMJudge, judge_request, parse_verdict
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
def test_llm_judge_end_to_end_on_nq_open(tmp_path: Path, ray_session: None, capsys: pytest.CaptureFixture[str]) -> None:
    from s3ft.models.chat import render_prompt
    from s3ft.models.resolve import load_tokenizer
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
    printed = capsys.readouterr().out
    assert "llm judge: 1 unparseable verdict(s)" in printed
    assert "llm judge audit: agrees with the qa judge on 100.0% of 3 rows" in printed


class EchoTokenizer:
    """A chat template that is the user's message itself."""

    chat_template = "echo"

    def apply_chat_template(self, messages: list[dict[str, str]], tokenize: bool, add_generation_prompt: bool) -> str:
        return messages[-1]["content"]


class GoldReadingPool:
    """A stand-in judge model: 'correct' when the prediction is one of the gold answers it was shown."""

    def generate_shards(self, shards: list[tuple[int, list[str]]], sampling: object) -> list[tuple[int, list[list[str]]]]:
        def reply(prompt: str) -> str:
            fields = dict(line.split(": ", 1) for line in prompt.splitlines() if ": " in line)
            return "correct" if fields["Predicted answer"] in fields["Gold answer"].split(" | ") else "incorrect"

        return [(key, [[reply(p)] for p in prompts]) for key, prompts in shards]


def test_a_row_with_answers_and_no_gold_is_judged_against_every_answer() -> None:
    judge = LLMJudge({"model": {"path": "unused"}})
    judge._pool, judge._tokenizer = GoldReadingPool(), EchoTokenizer()  # the engine seam: no model to start
    rows = [
        {"question": "Where is the Louvre?", "answers": ["Paris", "the City of Light"], "response": "the City of Light"},
        {"question": "Where is the Louvre?", "answers": ["Paris", "the City of Light"], "response": "Lyon"},
        {"question": "Where is the Louvre?", "gold": "Paris", "response": "Paris"},
        {"question": "Where is the Louvre?", "response": "Paris"},
    ]
    assert "Gold answer: Paris | the City of Light\n" in judge_request(DEFAULT_TEMPLATE, rows[0])
    verdicts = judge.judge_batch(rows)
    assert [v.correct for v in verdicts] == [True, False, True, False]
    assert verdicts[3].reason == "error: missing field(s) answers or gold"
