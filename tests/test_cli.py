import json
import re
from pathlib import Path

import pytest

from s3ft.cli import main
from s3ft.config import ModelConfig
from s3ft.errors import ModelError
from s3ft.models.resolve import resolve_model


def test_judge_command_writes_verdicts_and_error_rows(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = [
        {"id": 1, "response": "so 3 + 4 = 7. The answer is 7.", "gold": "#### 7"},
        {"id": 2, "response": "The answer is $1,000.", "gold": "#### 999"},
        {"id": 3, "response": "The answer is 5"},  # no gold: an error row, not a crash
    ]
    src, dst = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["judge", "math", "--input", str(src), "--output", str(dst)]) == 0
    out = [json.loads(line) for line in dst.read_text().splitlines()]
    assert [r["correct"] for r in out] == [True, False, False]
    assert [r["id"] for r in out] == [1, 2, 3] and out[0]["response"] == rows[0]["response"]
    assert out[2]["reason"].startswith("error") and "gold" in out[2]["reason"]
    assert "3 rows judged: 1 correct, 2 incorrect (1 could not be judged)" in capsys.readouterr().out


def test_judge_qa_contains_via_set(tmp_path: Path) -> None:
    src, dst = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_text(json.dumps({"response": "It was Paris, I think", "answers": ["paris"]}) + "\n")
    assert main(["judge", "qa", "--input", str(src), "--output", str(dst)]) == 0
    assert json.loads(dst.read_text())["correct"] is False
    assert main(["judge", "qa", "--input", str(src), "--output", str(dst), "--set", "judge.match=contains"]) == 0
    assert json.loads(dst.read_text())["correct"] is True


def test_user_mistakes_exit_2_with_a_plain_message(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"response": "1", "gold": "1"}\n{"response": \n')
    assert main(["judge", "math", "--input", str(bad), "--output", str(tmp_path / "o.jsonl")]) == 2
    assert "line 2" in capsys.readouterr().err
    assert main(["judge", "nonsense", "--input", str(bad), "--output", str(tmp_path / "o.jsonl")]) == 2
    assert "unknown judge kind 'nonsense'" in capsys.readouterr().err
    config = tmp_path / "c.yaml"
    config.write_text("output_dir: x\nmodel: {path: m}\ndata: {path: d.jsonl, task: gsm8k, colour: red}\n")
    assert main(["data", str(config)]) == 2
    err = capsys.readouterr().err
    assert "data.colour: unknown key" in err and "Traceback" not in err


def test_judge_code_runs_each_program_in_the_sandbox(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tests = ["assert add(1, 2) == 3", "assert add(-1, 1) == 0"]
    rows = [
        {"response": "Here it is:\n```python\ndef add(a, b):\n    return a + b\n```", "test_list": tests},
        {"response": "[BEGIN]\n 'def add(a, b):\\n    return a - b' \n[DONE]", "test_list": tests},
        {"response": "def add(a, b):\n    while True:\n        pass", "test_list": tests},
    ]
    src, dst = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    args = ["judge", "code", "--input", str(src), "--output", str(dst), "--set", "judge.options.timeout_s=2"]
    assert main(args) == 0
    reasons = [json.loads(line)["reason"] for line in dst.read_text().splitlines()]
    assert reasons == ["passed", "failed: AssertionError (test line 1: assert add(1, 2) == 3)", "timeout"]
    assert "3 rows judged: 1 correct, 2 incorrect (0 could not be judged)" in capsys.readouterr().out


class EchoJudgeModel:
    """Stands in for the judge model's engines and tokenizer: its reply is the response it was shown."""

    chat_template = "echo"

    def apply_chat_template(self, messages: list[dict[str, str]], tokenize: bool, add_generation_prompt: bool) -> str:
        return messages[-1]["content"]

    def generate_shards(self, shards: list[tuple[int, list[str]]], sampling: object) -> list[tuple[int, list[list[str]]]]:
        def response(prompt: str) -> str:
            return re.search(r"<<<RESPONSE (\w+)>>>\n(.*?)\n<<<END RESPONSE \1>>>", prompt, re.DOTALL).group(2)

        return [(key, [[response(prompt)] for prompt in prompts]) for key, prompts in shards]


def test_judge_llm_reports_unparseable_verdicts_and_the_audit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a model that echoes the response block, each response is its own verdict line."""
    from s3ft.judges.llm import LLMJudge

    monkeypatch.setattr(LLMJudge, "_engine", lambda self: (EchoJudgeModel(), EchoJudgeModel()))
    rows = [
        {"question": "q", "answers": ["yes"], "response": "yes"},  # llm correct, qa correct
        {"question": "q", "gold": "yes", "response": "no"},  # both incorrect
        {"question": "q", "gold": "hmm", "response": "hmm"},  # unparseable (incorrect); qa correct
        {"question": "q", "gold": "no", "response": "yes"},  # llm correct, qa incorrect
    ]
    src, dst = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    args = ["judge", "llm", "--input", str(src), "--output", str(dst), "--set", "judge.llm.model.path=unused",
            "--set", "judge.llm.audit_with=qa"]
    assert main(args) == 0
    assert [json.loads(line)["correct"] for line in dst.read_text().splitlines()] == [True, False, False, True]
    out = capsys.readouterr().out
    assert "4 rows judged: 2 correct, 2 incorrect (0 could not be judged)" in out
    assert "llm judge: 1 unparseable verdict(s), counted as incorrect" in out
    assert "llm judge audit: agrees with the qa judge on 50.0% of 4 rows" in out


def test_judge_refuses_settings_outside_the_judge_section(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"response": "It was Paris", "answers": ["paris"]}) + "\n")
    args = ["judge", "qa", "--input", str(src), "--output", str(tmp_path / "out.jsonl"), "--set", "match=contains"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "--set match: `s3ft judge` takes judge.* keys only" in err and "Traceback" not in err
    assert not (tmp_path / "out.jsonl").exists()


def test_judge_help_lists_every_registered_kind(capsys: pytest.CaptureFixture[str]) -> None:
    """Every option schema has its judge and every judge its schema (registering one without is refused)."""
    from s3ft.config import JUDGE_OPTIONS
    from s3ft.errors import JudgeError
    from s3ft.judges import JUDGES, Judge, register

    assert sorted(JUDGE_OPTIONS) == sorted(JUDGES)
    with pytest.raises(JudgeError, match="no options schema"):
        register("unschemed")(type("Unschemed", (Judge,), {}))
    with pytest.raises(SystemExit):
        main(["judge", "--help"])
    assert "Judge kind: code, llm, math, python, qa." in " ".join(capsys.readouterr().out.split())


def test_help_explains_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    for command in (["--help"], ["data", "--help"], ["judge", "--help"], ["init-tiny-model", "--help"]):
        with pytest.raises(SystemExit) as exc:
            main(command)
        assert exc.value.code == 0
    assert "--set" in capsys.readouterr().out


def test_tiny_model_is_written_and_resolved(tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert main(["init-tiny-model", str(tmp_path / "tiny")]) == 0
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "tiny")
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "tiny")
    assert model.config.head_dim == 64
    assert main(["init-tiny-model", str(tmp_path / "wide"), "--hidden-size", "256"]) == 0
    wide = AutoModelForCausalLM.from_pretrained(tmp_path / "wide").config
    assert (wide.head_dim, wide.num_attention_heads) == (64, 4)
    assert main(["init-tiny-model", str(tmp_path / "odd"), "--hidden-size", "96"]) == 2
    assert not (tmp_path / "odd").exists()
    text = tokenizer.apply_chat_template([{"role": "user", "content": "2+2?"}], tokenize=False, add_generation_prompt=True)
    assert tokenizer.decode(tokenizer(text, add_special_tokens=False).input_ids) == text
    assert resolve_model(ModelConfig(path=str(tmp_path / "tiny"))) == str(tmp_path / "tiny")
    built = resolve_model(ModelConfig(path=str(tmp_path / "auto"), build_if_missing="tiny"))
    assert (Path(built) / "config.json").is_file()


def test_missing_model_gives_clear_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ModelError, match="no Hugging Face model there"):
        resolve_model(ModelConfig(path=str(tmp_path / "absent")))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError, match="could not be downloaded.*set model.path"):
        resolve_model(ModelConfig(path="mistralai/Mistral-7B-Instruct-v0.2"))
