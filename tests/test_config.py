import re
from pathlib import Path

import pytest
import yaml

from s3ft.config import load_config, save_config, stage_key
from s3ft.errors import ConfigError

BASE = {
    "output_dir": "runs/x",
    "model": {"path": "some/model"},
    "data": {"path": "d.jsonl", "task": "gsm8k"},
}


def write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_defaults_and_overrides_are_typed(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, BASE), ["data.limit=7", 'generation.stop=["\\n\\n"]', "selection.strategy=rft"])
    assert cfg.data.limit == 7
    assert cfg.generation.stop == ["\n\n"]
    assert cfg.selection.strategy == "rft"
    assert cfg.generation.temperature == 0.0  # greedy unless asked


def test_unknown_key_names_the_key_and_what_is_allowed(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        load_config(write(tmp_path, {**BASE, "data": {**BASE["data"], "limt": 3}}))
    assert "data.limt: unknown key" in str(exc.value)
    assert "limit" in str(exc.value)


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("data.limit=-1", "data.limit: Input should be greater than 0"),
        ("data.limit=many", "data.limit: Input should be a valid integer"),
        ("selection.strategy=best", "'sft', 'ssr', 's3ft' or 'rft'"),
        ("judge.kind=python", "judge.target"),
        ("judge.kind=rouge", "unknown judge kind 'rouge'; known: code, llm, math, python, qa"),
        ("judge.options.bogus=1", "unknown option(s) bogus for the 'math' judge; allowed: timeout_s, verifier"),
        ("generation.backend=hf", None),
    ],
)
def test_bad_values_are_refused_before_work(tmp_path: Path, override: str, expected: str | None) -> None:
    path = write(tmp_path, BASE)
    if expected is None:
        assert load_config(path, [override]).generation.backend == "hf"
        with pytest.raises(ConfigError, match="tensor_parallel_size"):
            load_config(path, [override, "generation.tensor_parallel_size=2"])
        return
    with pytest.raises(ConfigError, match=re.escape(expected)):
        load_config(path, [override])


def test_judge_options_are_checked_against_the_judge_kind(tmp_path: Path) -> None:
    path = write(tmp_path, {**BASE, "judge": {"kind": "code"}})
    assert load_config(path, ["judge.options.memory_mb=512"]).judge.options == {"memory_mb": 512}
    with pytest.raises(ConfigError, match="memory for the 'code' judge; allowed: memory_mb, num_workers, timeout_s"):
        load_config(path, ["judge.options.memory=512"])


def test_override_syntax_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="key.sub=value"):
        load_config(write(tmp_path, BASE), ["data.limit"])
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="is a value"):
        load_config(write(tmp_path, BASE), ["output_dir.x=1"])


def test_saved_config_round_trips_and_stage_key_tracks_settings(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, BASE))
    save_config(cfg, tmp_path / "run" / "config.yaml")
    again = load_config(tmp_path / "run" / "config.yaml")
    assert again == cfg
    assert stage_key(cfg.generation) == stage_key(again.generation)
    changed = load_config(write(tmp_path, BASE), ["generation.max_tokens=17"])
    assert stage_key(changed.generation) != stage_key(cfg.generation)
