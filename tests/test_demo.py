"""The CPU demo: its synthetic tasks are deterministic and judged right by the math judge, and a
shortened demo runs through its driver into both runs' results and the comparison report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from s3ft.demo.report import DemoRun, demo_notes
from s3ft.demo.tasks import Addition, demo_files, make_splits
from s3ft.eval.results import Results, results_path
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


def test_notes_give_noise_and_the_spread_over_seeds(tmp_path: Path) -> None:
    runs = []
    for strategy, seed, in_domain, held_out in [("s3ft", 0, 0.85, 0.94), ("sft", 0, 0.80, 0.50),
                                                 ("s3ft", 1, 0.87, 0.96), ("sft", 1, 0.70, 0.60)]:
        run = DemoRun(strategy, seed, tmp_path / f"{strategy}{seed}")
        results = Results.model_validate({"strategy": strategy, "seed": seed,
                                          "in_domain": {"task": "gsm8k", "metric": "accuracy", "n": 200,
                                                        "base": 0.56, "trained": in_domain},
                                          "general": {"base": {"demo_reverse": 1.0},
                                                      "trained": {"demo_reverse": held_out}}})
        results_path(run.path).parent.mkdir(parents=True)
        results_path(run.path).write_text(results.model_dump_json())
        runs.append(run)
    notes = demo_notes(tmp_path / "no-base-model", runs, minutes=7.25)
    assert "| base | 56.0 ± 3.5 | 100.0 ± 0.0 |" in notes  # sqrt(.56 * .44 / 200) = 3.5 points
    assert "| sft (seed 1) | 70.0 ± 3.2 | 60.0 ± 3.5 |" in notes
    assert "| s3ft, mean ± sd over 2 seeds | 86.0 ± 1.4 | 95.0 ± 1.4 |" in notes
    assert "| sft, mean ± sd over 2 seeds | 75.0 ± 7.1 | 55.0 ± 7.1 |" in notes
    assert "Seeds 0, 1" in notes and "took 7.2 minutes" in notes


@pytest.mark.slow
def test_shortened_demo_runs_end_to_end(ray_session: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Few rows, steps and test rows, a briefly pretrained base model, and the hf backend for
    generation (no vLLM engine start): the driver's plumbing, not the demo's numbers."""
    from s3ft.demo.__main__ import main

    monkeypatch.chdir(REPO)
    runs, base = tmp_path / "runs", tmp_path / "base-model"
    sets = [f"model.path={base}", "generation.backend=hf", "data.limit=24", "train.max_steps=2",
            "eval.limit=8", "eval.general_limit=8", "eval.likelihood_rows=8"]
    assert main(["--runs", str(runs), "--pretrain-steps", "20", *(a for s in sets for a in ("--set", s))]) == 0

    assert json.loads((base / "pretrain.json").read_text())["settings"]["steps"] == 20
    for strategy in ("s3ft", "sft"):
        results = json.loads((runs / f"demo_{strategy}" / "eval" / "results.json").read_text())
        assert results["strategy"] == strategy
        assert results["in_domain"]["n"] == 8
        assert {"base", "trained"} <= set(results["in_domain"])
        assert set(results["general"]["trained"]) == {"demo_reverse"}
        stats = json.loads((runs / f"demo_{strategy}" / "data" / "stats.json").read_text())
        assert stats["total"] == 24
    report = (runs / "demo_report" / "report.md").read_text()
    assert "demo_s3ft" in report and "demo_sft" in report and "## Demo notes" in report
    assert (runs / "demo_report" / "report.png").is_file()
