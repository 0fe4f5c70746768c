"""The CPU demo: its synthetic tasks are deterministic and judged right by the math judge, and a
shortened demo runs through its driver into both runs' results and the comparison report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from s3ft.config import load_config
from s3ft.demo.report import demo_notes
from s3ft.demo.tasks import Addition, demo_files, make_splits
from s3ft.judges.math import MathJudge
from tests.paths import REPO


def test_splits_are_deterministic_and_disjoint() -> None:
    first, again, other = make_splits(0), make_splits(0), make_splits(1)
    assert first == again
    assert first.test != other.test
    pretrain, finetune, test = (set(s) for s in (first.pretrain, first.finetune, first.test))
    assert not (pretrain & finetune or pretrain & test or finetune & test)
    assert (len(finetune), len(test), len(set(first.reverse_test))) == (512, 200, 200)


def test_shipped_files_are_the_generators_output() -> None:
    """configs/data/demo/ and the lm-eval task's JSONL are `python -m s3ft.demo.tasks` of seed 0."""
    for path, content in demo_files(0).items():
        assert path.read_text() == content, f"{path} is stale: run python -m s3ft.demo.tasks"


def test_shipped_base_model_is_todays_recipe(tmp_path: Path) -> None:
    """s3ft/demo/base_model is what `build_demo_model` makes with today's defaults: a changed recipe,
    tokenizer or architecture fails here until the model is built again and shipped."""
    from dataclasses import asdict

    from s3ft.demo.pretrain import PretrainSettings
    from s3ft.models.tiny import build_tiny_model

    shipped = REPO / "s3ft" / "demo" / "base_model"
    assert json.loads((shipped / "pretrain.json").read_text())["settings"] == asdict(PretrainSettings())
    fresh = build_tiny_model(tmp_path / "fresh", seed=PretrainSettings().seed)
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        assert _content(shipped / name) == _content(fresh / name), name
    config = load_config(REPO / "configs" / "experiments" / "demo.yaml")
    assert (REPO / config.model.path).resolve() == shipped.resolve()


def _content(path: Path) -> object:
    return json.loads(path.read_text()) if path.suffix == ".json" else path.read_text()


def test_math_judge_reads_both_styles() -> None:
    judge = MathJudge()
    for x in make_splits(0).finetune:
        assert judge.judge_row({"response": x.own, "gold": x.gold}).correct
        assert judge.judge_row({"response": x.gold, "gold": x.gold}).correct
        wrong = Addition(x.a, x.b + 1)
        assert not judge.judge_row({"response": wrong.own, "gold": x.gold}).correct
    assert Addition(23, 45).own == "23+45: 3+5=8, 2+4+0=6. The answer is 68"
    assert Addition(53, 98, phrasing=1).question == "What is 53 plus 98?"
    assert Addition(53, 98).own == "53+98: 3+8=11, 5+9+1=15. The answer is 151"
    assert Addition(23, 45).gold == "Adding 23 and 45: 3+5=8, 2+4+0=6, so the sum is 68.\n#### 68"


def test_notes_give_each_strategy_at_its_chosen_rate_with_standard_errors(tmp_path: Path) -> None:
    from tests.test_sweep import _sweep_dir

    one_seed = _sweep_dir(tmp_path / "one", {
        ("sft", "1e-4", 0): (0.80, 0.70, 0.90), ("sft", "3e-4", 0): (0.60, 0.95, 0.20),
        ("s3ft", "1e-4", 0): (0.70, 0.72, 0.99), ("s3ft", "3e-4", 0): (0.90, 0.90, 0.95),
    })
    notes = demo_notes(tmp_path / "no-base-model", one_seed, minutes=7.25)
    assert "| base | — | 50.0 ± 6.2 | 50.0 ± 3.5 | 100.0 ± 0.0 | |" in notes  # sqrt(.5 * .5 / 64), / 200
    assert "| sft | 0.0001 | 80.0 ± 5.0 | 70.0 ± 3.2 | 90.0 ± 2.1 |" in notes  # validation chose 1e-4, not 3e-4
    assert "| s3ft | 0.0003 | 90.0 ± 3.8 | 90.0 ± 2.1 | 95.0 ± 1.5 |" in notes
    assert "sft 0.0001; s3ft 0.0003" in notes and "binomial" in notes and "took 7.2 minutes" in notes

    seeds = _sweep_dir(tmp_path / "seeds", {
        ("s3ft", "3e-4", 0): (0.90, 0.85, 0.94), ("s3ft", "3e-4", 1): (0.80, 0.87, 0.96),
    })
    notes = demo_notes(tmp_path / "no-base-model", seeds, minutes=1.0)
    assert "| s3ft | 0.0003 | 85.0 ± 5.0 | 86.0 ± 1.0 | 95.0 ± 1.0 |" in notes and "over the seeds 0, 1" in notes


@pytest.mark.slow
def test_shortened_demo_runs_end_to_end(ray_session: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Few rows, steps and test rows, one learning rate, a briefly pretrained base model, and the hf
    backend for generation (no vLLM engine start): the driver's plumbing, not the demo's numbers."""
    from s3ft.demo.__main__ import main

    monkeypatch.chdir(REPO)
    runs, base = tmp_path / "runs", tmp_path / "base-model"
    sets = [f"model.path={base}", "generation.backend=hf", "data.limit=28", "data.validation_rows=4",
            "train.max_steps=2", "eval.limit=8", "eval.general_limit=8", "eval.likelihood_rows=8"]
    assert main(["--runs", str(runs), "--pretrain-steps", "20", "--lrs", "3e-4",
                 *(a for s in sets for a in ("--set", s))]) == 0

    assert json.loads((base / "pretrain.json").read_text())["settings"]["steps"] == 20
    for strategy in ("sft", "ssr", "s3ft"):
        run = runs / "demo" / "runs" / f"lr3e-4-{strategy}-seed0"
        results = json.loads((run / "eval" / "results.json").read_text())
        assert results["strategy"] == strategy
        assert results["in_domain"]["n"] == 8 and results["validation"]["n"] == 4
        assert {"base", "trained"} <= set(results["in_domain"])
        assert set(results["general"]["trained"]) == {"demo_reverse"}
        assert json.loads((run / "data" / "stats.json").read_text())["total"] == 24
    report = (runs / "demo" / "report" / "report.md").read_text()
    assert "## Protocol" in report and "## Demo notes" in report and "| s3ft | 0.0003 |" in report
    assert (runs / "demo" / "report" / "report.png").is_file()
