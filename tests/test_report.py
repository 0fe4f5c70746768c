"""eval/results.json merging, and the comparison report built from real run directories."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from s3ft.eval.results import EvalError, read_results, results_path, update_results
from s3ft.report import ReportError, write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
BASE = {"mmlu": 0.59, "truthfulqa_mc2": 0.67, "hellaswag": 0.80, "winogrande": 0.75}


def _run_dir(root: Path, name: str, strategy: str, seed: int, counts: dict[str, int], leaked: int | None = None) -> Path:
    run = root / name
    (run / "data").mkdir(parents=True)
    config = {"output_dir": str(run), "seed": seed, "model": {"path": "/models/base-7b"},
              "data": {"path": "train.jsonl", "task": "gsm8k"}, "selection": {"strategy": strategy}}
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    total = sum(counts.values())
    stats = {"strategy": strategy, "total": total, **counts, "share": {k: v / total for k, v in counts.items()}}
    if leaked is not None:
        stats["paraphrase_leaked"] = leaked
    (run / "data" / "stats.json").write_text(json.dumps(stats))
    return run


@pytest.fixture
def two_runs(tmp_path: Path) -> list[Path]:
    sft = _run_dir(tmp_path, "sft-gsm8k", "sft", 0, {"self": 0, "paraphrase": 0, "gold": 100})
    s3ft = _run_dir(tmp_path, "s3ft-gsm8k", "s3ft", 1, {"self": 99, "paraphrase": 84, "gold": 17}, leaked=6)
    for run, in_domain, trained in [
        (sft, 0.534, {"mmlu": 0.55, "truthfulqa_mc2": 0.64, "hellaswag": 0.78, "winogrande": 0.74}),
        # arc_challenge has no base score: it must stay out of the average change.
        (s3ft, 0.569,
         {"mmlu": 0.58, "truthfulqa_mc2": 0.665, "hellaswag": 0.80, "winogrande": 0.745, "arc_challenge": 0.5}),
    ]:
        path = results_path(run)
        # As the stages write it: identity, then base and trained scores in separate calls.
        update_results(path, run=run.name, base_model="/models/base-7b", trained_model=str(run / "model"))
        update_results(path, in_domain={"task": "gsm8k", "metric": "accuracy", "n": 1319, "base": 0.403})
        update_results(path, in_domain={"trained": in_domain}, general={"base": BASE})
        update_results(path, general={"trained": trained})
    likelihood = {"base_model": "/models/base-7b", "nll": {"self": 0.41, "paraphrase": 0.83, "gold": 1.37},
                  "rows": {"self": 10, "paraphrase": 5, "gold": 3}}
    update_results(results_path(s3ft), likelihood=likelihood)
    return [sft, s3ft]


def test_sections_merge_field_by_field(two_runs: list[Path]) -> None:
    results = read_results(results_path(two_runs[1]))
    assert results.in_domain.model_dump() == {
        "task": "gsm8k", "metric": "accuracy", "name": None, "n": 1319, "base": 0.403, "trained": 0.569}
    assert results.general.base == BASE and results.general.trained["arc_challenge"] == 0.5
    assert results.likelihood.rows == {"self": 10, "paraphrase": 5, "gold": 3}
    again = update_results(results_path(two_runs[1]), general={"trained": {"mmlu": 0.6}}, seed=None)
    assert again.general.trained == {"mmlu": 0.6} and again.general.base == BASE  # a field is replaced whole
    assert read_results(results_path(two_runs[1])) == again
    assert read_results(two_runs[0] / "nothing.json").model_dump(exclude_none=True) == {}


def test_bad_results_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "results.json"
    with pytest.raises(EvalError, match="in_domain.task"):
        update_results(path, in_domain={"trained": 0.5})
    assert not path.exists()
    path.write_text("{not json")
    with pytest.raises(EvalError, match="not valid JSON"):
        read_results(path)


def test_report_tables_and_arithmetic(two_runs: list[Path], tmp_path: Path) -> None:
    md, png = write_report(two_runs, tmp_path / "out")
    text = md.read_text()
    lines = text.splitlines()
    header = next(line for line in lines if line.startswith("| run | strategy | seed |"))
    assert header == ("| run | strategy | seed | gsm8k accuracy | Δ in-domain | mmlu | truthfulqa_mc2 | hellaswag | "
                      "winogrande | arc_challenge | Δ general (avg) |")
    assert "| base | — | — | 40.3 | — | 59.0 | 67.0 | 80.0 | 75.0 | — | — |" in lines
    # sft: (-4 - 3 - 2 - 1) / 4 = -2.5 points; s3ft: (-1 - 0.5 + 0 - 0.5) / 4 = -0.5 (arc_challenge has no base).
    assert "| sft-gsm8k | sft | 0 | 53.4 | +13.1 | 55.0 | 64.0 | 78.0 | 74.0 | — | -2.5 |" in lines
    assert "| s3ft-gsm8k | s3ft | 1 | 56.9 | +16.6 | 58.0 | 66.5 | 80.0 | 74.5 | 50.0 | -0.5 |" in lines
    assert "In-domain test sets: gsm8k n=1319. " in text
    assert "| run | strategy | total | self | paraphrase | gold | paraphrases leaked |" in lines
    assert "| sft-gsm8k | sft | 100 | 0 (0.0%) | 0 (0.0%) | 100 (100.0%) | — |" in lines  # stats.json without the count
    assert "| s3ft-gsm8k | s3ft | 200 | 99 (49.5%) | 84 (42.0%) | 17 (8.5%) | 6 |" in lines
    assert any(line.startswith("paraphrases leaked: rewrites the judge passed") for line in lines)
    assert "| s3ft-gsm8k | /models/base-7b | 0.410 (10) | 0.830 (5) | 1.370 (3) |" in lines
    assert "| sft-gsm8k | — | — | — | — |" in lines
    assert f"| s3ft-gsm8k | {two_runs[1]} | s3ft | 1 | /models/base-7b | {two_runs[1] / 'model'} |" in lines
    assert "](report.png)" in text and "## Notes" not in text

    data = png.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 10_000
    from PIL import Image

    with Image.open(png) as image:
        image.verify()
    with Image.open(png) as image:
        assert image.format == "PNG" and image.size[0] >= 400 and image.size[1] >= 300
        assert len(set(image.convert("RGB").getdata())) > 10  # bars, text and axes, not a blank canvas


def test_missing_pieces_render_as_dashes(tmp_path: Path) -> None:
    bare = tmp_path / "bare"  # a run with nothing evaluated yet
    bare.mkdir()
    broken = _run_dir(tmp_path, "broken", "ssr", 3, {"self": 1, "paraphrase": 0, "gold": 1})
    results_path(broken).parent.mkdir()
    results_path(broken).write_text("{oops")
    (broken / "data" / "stats.json").write_text(json.dumps({"strategy": "ssr", "total": 2, "self": 1, "gold": 1}))
    md, png = write_report([bare, broken, bare], tmp_path / "out")
    lines = md.read_text().splitlines()
    assert "| bare | — | — | — | — |" in lines  # Δ in-domain, Δ general: nothing to compare
    assert "| broken | ssr | 3 | — | — |" in lines
    assert "| bare#2 | — | — | — | — |" in lines
    assert "| broken | ssr | 2 | 1 (50.0%) | — | 1 (50.0%) | — |" in lines
    assert any(line.startswith("- broken: ") and "not valid JSON" in line for line in lines)
    assert png.read_bytes().startswith(PNG_MAGIC)
    with pytest.raises(ReportError, match="not a run directory"):
        write_report([tmp_path / "no-such-run"], tmp_path / "out")


def test_in_domain_column_is_named_after_the_eval_set(two_runs: list[Path], tmp_path: Path) -> None:
    for run in two_runs:
        update_results(results_path(run), in_domain={"name": "addition"})
    text = write_report(two_runs, tmp_path / "out")[0].read_text()
    assert "| run | strategy | seed | addition accuracy | Δ in-domain |" in text
    assert "gsm8k" not in text.split("## Training targets")[0].replace("sft-gsm8k", "").replace("s3ft-gsm8k", "")
    assert "In-domain test sets: addition n=1319. " in text


def test_eval_name_defaults_to_the_test_file(tmp_path: Path) -> None:
    from s3ft.config import build_config
    from s3ft.eval.in_domain import eval_name

    def name(**ev: object) -> str:
        return eval_name(build_config({"output_dir": str(tmp_path), "model": {"path": "m"},
                                       "data": {"path": "d.jsonl", "task": "gsm8k"}, "eval": ev}))

    assert name(data_path="data/gsm8k/test.jsonl") == "gsm8k test"
    assert name(data_path="configs/data/demo/additions.jsonl") == "additions"
    assert name(data_path="configs/data/demo/test.jsonl", name="addition") == "addition"
