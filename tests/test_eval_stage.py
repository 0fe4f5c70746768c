"""`s3ft eval` through our stages: in-domain accuracy equals what the memorised model must score, and a
local lm-eval task runs end to end into results.json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from s3ft.cli import main
from s3ft.config import load_config
from s3ft.eval.lm_eval_tasks import TASKS_DIR
from s3ft.eval.results import read_results, results_path
from s3ft.pipeline.data_engine import run_data
from tests.engine_workspace import config_file
from tests.test_eval_general import _docs, _hand_accuracy

pytestmark = pytest.mark.slow


def test_eval_stage_scores_in_domain_general_and_likelihood(
    engine_workspace: Path, ray_session: None, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    config = config_file(engine_workspace, out, generation__backend="hf", selection__strategy="sft",
                         eval__models=["base"], eval__general_tasks=["local_mc"], eval__likelihood_rows=10)
    run_data(load_config(config))  # sft: merged rows for the likelihood diagnostic, no generation
    assert main(["eval", str(config)]) == 0

    results = read_results(results_path(out))
    # the memorised model answers q1 and q2 right and q3..q6 wrong: 2 of 6, by construction
    assert results.in_domain is not None
    assert (results.in_domain.n, results.in_domain.base) == (6, pytest.approx(2 / 6))
    rows = [json.loads(line) for line in (out / "eval" / "in_domain_base.jsonl").read_text().splitlines()]
    assert [r["correct"] for r in rows] == [True, True, False, False, False, False]
    assert rows[0]["response"] == "12+7=19. The answer is 19"

    # lm-eval's accuracy on the packaged local task equals the hand computation of log-likelihoods
    local = TASKS_DIR / "local_mc" / "local_mc.jsonl"
    expected = _hand_accuracy(engine_workspace / "model", _docs(local, "question", "choices", "answer"),
                              "Question: {}\nAnswer:")
    assert results.general is not None and results.general.base["local_mc"] == pytest.approx(expected)
    assert results.likelihood is not None and results.likelihood.rows == {"gold": 6}
    assert results.strategy == "sft" and results.trained_model is None


def test_base_scores_are_reused_across_runs_and_validation_is_scored(
    engine_workspace: Path, ray_session: None, tmp_path: Path
) -> None:
    """Two runs with one base model and eval settings: the second reads the first's base scores (a marked
    cache entry proves it), and the validation rows carved from the training set are scored apart."""
    runs = [tmp_path / "first", tmp_path / "second"]
    for out in runs:
        config = config_file(engine_workspace, out, generation__backend="hf", selection__strategy="sft",
                             eval__models=["base"], eval__likelihood=False, data__validation_rows=2,
                             eval__name="sums")
        run_data(load_config(config))
        if out == runs[0]:
            assert main(["eval", str(config)]) == 0
            entries = list((tmp_path / ".s3ft-cache" / "base-eval").iterdir())
            assert len(entries) == 1
            scores = json.loads((entries[0] / "scores.json").read_text())
            assert scores["test"] == {"accuracy": pytest.approx(2 / 6), "n": 6} and scores["validation"]["n"] == 2
            scores["test"]["accuracy"] = 0.125  # a mark: only a reuse can report it
            (entries[0] / "scores.json").write_text(json.dumps(scores))
        else:
            assert main(["eval", str(config)]) == 0
    first, second = (read_results(results_path(out)) for out in runs)
    assert first.in_domain.base == pytest.approx(2 / 6) and second.in_domain.base == 0.125
    assert second.in_domain.name == "sums" and second.validation.name == "sums (validation)"
    assert second.validation.n == 2 and first.validation.base == second.validation.base
    held = [json.loads(line)["id"] for line in (runs[1] / "data" / "validation.jsonl").read_text().splitlines()]
    merged = [json.loads(line)["id"] for line in (runs[1] / "data" / "merged.jsonl").read_text().splitlines()]
    assert len(held) == 2 and len(merged) == 4 and not set(held) & set(merged)  # never trained on
    rows = (runs[1] / "eval" / "in_domain_base.jsonl").read_text().splitlines()
    assert len(rows) == 6  # the per-row outputs come with the cached scores
