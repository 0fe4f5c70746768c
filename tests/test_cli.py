import json
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
