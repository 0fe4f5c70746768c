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
