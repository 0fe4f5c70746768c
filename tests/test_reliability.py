"""Bad places and bad rows are refused before work, with the reason; nothing is dropped in silence."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from s3ft.cli import main
from s3ft.config import DataConfig
from s3ft.data.load import run_load
from s3ft.data.prompts import load_templates
from s3ft.errors import DataError
from s3ft.models.resolve import load_tokenizer, prompt_fits
from s3ft.runtime.shards import ShardStore, read_jsonl

SAMPLE = Path(__file__).resolve().parents[1] / "configs" / "data" / "gsm8k_sample.jsonl"


def config(tmp_path: Path, out: Path) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"output_dir": str(out), "model": {"path": str(tmp_path / "no-model")},
                                    "data": {"path": str(SAMPLE), "task": "gsm8k"}}))
    return path


def test_an_output_dir_that_cannot_be_written_is_refused_first(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    for command in ("data", "run", "train"):
        assert main([command, str(config(tmp_path, blocker / "run"))]) == 2
        assert "is not writable" in capsys.readouterr().err  # refused before the (missing) model is even looked at


def test_a_full_output_disk_is_refused_first(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    full = tmp_path / "full"
    full.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(full)], capture_output=True).returncode:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        assert main(["data", str(config(tmp_path, full / "run"))]) == 2
        assert "No space left on device" in capsys.readouterr().err
    finally:
        subprocess.run(["umount", str(full)], check=True)


def test_prompts_longer_than_the_context_are_an_error_or_a_reject(tmp_path: Path, tiny_model_dir: Path) -> None:
    rows = [{"question": "2+2?", "answer": "#### 4"}, {"question": "x" * 400, "answer": "#### 1"},
            {"question": "3+3?", "answer": "#### 6"}]
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    templates = load_templates("gsm8k")
    check = prompt_fits(load_tokenizer(str(tiny_model_dir)), context=400, max_tokens=64)
    store = ShardStore(tmp_path / "run", "load", "k")
    with pytest.raises(DataError) as exc:
        run_load(DataConfig(path=str(data), task="gsm8k"), templates, store, 8, tmp_path / "rejects.jsonl", check)
    assert (exc.value.line, exc.value.field) == (2, "messages") and "exceeds the model's context of 400" in str(exc.value)

    run_load(DataConfig(path=str(data), task="gsm8k", on_bad_row="skip"), templates, store, 8,
             tmp_path / "rejects.jsonl", check)
    (reject,) = read_jsonl(tmp_path / "rejects.jsonl")
    assert reject["line"] == 2 and "max_tokens 64" in reject["reason"]
    assert [r["question"] for r in store.rows()] == ["2+2?", "3+3?"]
    assert store.manifest["input_rows"] == 3 == store.manifest["rows"] + store.manifest["rejected"]
