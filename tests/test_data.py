import json
from pathlib import Path

import pytest

from s3ft.config import DataConfig
from s3ft.data.load import examples, run_load
from s3ft.data.prompts import load_templates, render
from s3ft.data.sources import iter_records
from s3ft.errors import ConfigError, DataError
from s3ft.runtime.shards import ShardStore, read_jsonl
from tests.paths import shared_file


def load(path: Path | str, task: str, **kw: object) -> tuple[list[dict], list[dict]]:
    cfg = DataConfig(path=str(path), task=task, **kw)
    rejects: list[dict] = []
    return list(examples(cfg, load_templates(task), rejects)), rejects


def write_lines(path: Path, lines: list[str | bytes]) -> Path:
    path.write_bytes(b"\n".join(l if isinstance(l, bytes) else l.encode() for l in lines) + b"\n")
    return path


def test_gsm8k_rows_become_prompts_in_the_papers_style() -> None:
    rows, rejects = load(shared_file("gsm8k", "test.jsonl"), "gsm8k", limit=5)
    assert len(rows) == 5 and not rejects
    first = rows[0]
    assert first["id"] == "gsm8k-1"
    assert first["gold"].rstrip().split("####")[-1].strip().isdigit()
    content = first["messages"][-1]["content"]
    assert first["question"] in content and "The answer is N" in content


def test_humaneval_and_nq_open_adapters_keep_what_their_judges_need() -> None:
    rows, _ = load(shared_file("humaneval", "HumanEval.jsonl"), "humaneval", limit=3)
    assert rows[0]["id"] == "HumanEval/0"
    assert {"prompt", "test", "entry_point"} <= rows[0].keys()
    assert rows[0]["gold"].startswith("```python\n") and "def " in rows[0]["gold"]
    rows, _ = load(shared_file("nq_open", "dev.jsonl"), "nq_open", limit=3)
    assert isinstance(rows[0]["answers"], list) and rows[0]["gold"] == rows[0]["answers"][0]


def test_mbpp_and_generic_formats(tmp_path: Path) -> None:
    mbpp = write_lines(tmp_path / "mbpp.jsonl", [json.dumps({
        "task_id": 2, "text": "Write a function to add {a} and b.", "code": "def add(a, b):\n    return a + b",
        "test_list": ["assert add(1, 2) == 3"], "test_setup_code": ""})])
    (row,), _ = load(mbpp, "mbpp")
    assert row["id"] == "2" and "assert add(1, 2) == 3" in row["messages"][-1]["content"]
    assert "{a}" in row["messages"][-1]["content"]  # braces in data survive templating
    assert row["gold"].startswith("[BEGIN]") and row["test_list"] == ["assert add(1, 2) == 3"]

    generic = write_lines(tmp_path / "g.jsonl", [
        json.dumps({"prompt": "Say hi", "response": "hi", "answers": ["hi"]}),
        json.dumps({"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"},
                                 {"role": "assistant", "content": "4"}]}),
    ])
    first, second = load(generic, "generic")[0]
    assert first["messages"] == [{"role": "user", "content": "Say hi"}] and first["answers"] == ["hi"]
    assert second["gold"] == "4" and second["messages"][0]["role"] == "system" and len(second["messages"]) == 2


def test_bad_rows_are_errors_naming_file_line_and_field(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "bad.jsonl", [
        json.dumps({"question": "q", "answer": "x #### 1"}),
        json.dumps({"question": "q2"}),
    ])
    with pytest.raises(DataError) as exc:
        load(path, "gsm8k")
    assert (exc.value.file, exc.value.line, exc.value.field) == (str(path), 2, "answer")
    assert "line 2" in str(exc.value) and "answer" in str(exc.value) and "on_bad_row" in str(exc.value)

    broken = write_lines(tmp_path / "broken.jsonl", ['{"question": "q", "answer": "#### 1"', "[1, 2]"])
    with pytest.raises(DataError, match="line 1.*not valid JSON"):
        load(broken, "gsm8k")


def test_skip_writes_every_bad_row_to_rejects_with_its_reason(tmp_path: Path) -> None:
    good = json.dumps({"question": "q", "answer": "a #### 1"})
    path = write_lines(tmp_path / "mixed.jsonl", [
        good,
        b'{"question": "caf\xe9", "answer": "#### 2"}',  # latin-1 byte: not UTF-8
        '{"question": ',
        json.dumps({"question": "", "answer": "#### 3"}),
        json.dumps({"question": "q", "answer": "no hashes"}),
        json.dumps({"id": "dup", "question": "q", "answer": "#### 4"}),
        json.dumps({"id": "dup", "question": "q", "answer": "#### 5"}),
        json.dumps(["not", "an", "object"]),
        good,
    ])
    store = ShardStore(tmp_path / "run", "load", "k")
    cfg = DataConfig(path=str(path), task="gsm8k", on_bad_row="skip")
    run_load(cfg, load_templates("gsm8k"), store, shard_size=2, rejects_path=tmp_path / "rejects.jsonl")
    rejects = read_jsonl(tmp_path / "rejects.jsonl")
    kept = list(store.rows())
    assert len(kept) + len(rejects) == 9 == store.manifest["input_rows"]
    assert [r["line"] for r in rejects] == [2, 3, 4, 5, 7, 8]
    reasons = " | ".join(r["reason"] for r in rejects)
    for expected in ("UTF-8", "not valid JSON", "empty", "#### N", "duplicate id 'dup'", "JSON object"):
        assert expected in reasons
    assert [r["field"] for r in rejects][2:5] == ["question", "answer", "id"]
    assert store.num_shards == 2 and store.manifest["rejected"] == 6


def test_parquet_and_saved_datasets_load_like_jsonl(tmp_path: Path) -> None:
    import datasets

    rows = [{"question": f"q{i}", "answer": f"a #### {i}"} for i in range(3)]
    ds = datasets.Dataset.from_list(rows)
    ds.to_parquet(str(tmp_path / "d.parquet"))
    datasets.DatasetDict({"train": ds, "test": ds.select([0])}).save_to_disk(str(tmp_path / "disk"))
    assert [r["question"] for r in load(tmp_path / "d.parquet", "gsm8k")[0]] == ["q0", "q1", "q2"]
    assert len(load(tmp_path / "disk", "gsm8k", split="test")[0]) == 1
    with pytest.raises(DataError, match="split 'dev' not found"):
        load(tmp_path / "disk", "gsm8k", split="dev")


def test_missing_path_and_unreachable_hub_give_clear_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(DataError, match="no such file"):
        list(iter_records(str(tmp_path / "absent.jsonl")))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataError, match="hub failed.*set data.path"):
        list(iter_records("someone/some-dataset"))


def test_templates_render_and_overrides_are_checked(tmp_path: Path) -> None:
    assert render("Q: {question} {unknown}", {"question": "x{y}"}) == "Q: x{y} {unknown}"
    override = tmp_path / "t.yaml"
    override.write_text("prompt: 'Just {question}'\n")
    assert load_templates("gsm8k", str(override)).prompt == "Just {question}"
    override.write_text("promt: 'x'\n")
    with pytest.raises(ConfigError, match="promt"):
        load_templates("gsm8k", str(override))
