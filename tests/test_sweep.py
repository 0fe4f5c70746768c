"""`s3ft sweep`: the grid becomes named runs, each strategy's setting is chosen on validation scores
(never test scores), the report states the protocol, and a real sweep shares its data stages."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from s3ft.errors import ConfigError
from s3ft.eval.results import results_path, update_results
from s3ft.pipeline.sweep import Point, parse_grid, points, write_sweep_report
from s3ft.report.runs import load_run
from s3ft.report.sweep import choose, with_error

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_grid_expands_to_named_runs_seeds_outermost() -> None:
    grid = parse_grid(["train.lr=1e-4, 3e-4", "selection.strategy=sft,s3ft"])
    assert grid == {"train.lr": ["1e-4", "3e-4"], "selection.strategy": ["sft", "s3ft"]}
    names = [p.name for p in points(grid, [0, 1])]
    assert names[:4] == ["lr1e-4-sft-seed0", "lr1e-4-s3ft-seed0", "lr3e-4-sft-seed0", "lr3e-4-s3ft-seed0"]
    assert names[4:] == [n.replace("seed0", "seed1") for n in names[:4]]
    for bad, why in [("train.lr=", "at least one value"), ("seed=1,2", "--seeds")]:
        with pytest.raises(ConfigError, match=why):
            parse_grid([bad])
    with pytest.raises(ConfigError, match="twice"):
        parse_grid(["train.lr=1", "train.lr=2"])


def _sweep_dir(root: Path, scores: dict[tuple[str, str, int], tuple[float, float, float]]) -> Path:
    """A finished sweep on disk: per (strategy, lr, seed) its (validation, test, held-out) accuracy."""
    grid = {"train.lr": sorted({lr for _, lr, _ in scores}), "selection.strategy": list(dict.fromkeys(s for s, _, _ in scores))}
    seeds = sorted({seed for _, _, seed in scores})
    runs = []
    for (strategy, lr, seed), (val, test, held) in scores.items():
        point = Point({"train.lr": lr, "selection.strategy": strategy}, seed)
        run = root / "runs" / point.name
        run.mkdir(parents=True)
        (run / "config.yaml").write_text(yaml.safe_dump({"seed": seed, "train": {"lr": float(lr), "seed": seed},
                                                         "selection": {"strategy": strategy}}))
        update_results(results_path(run), run=point.name, strategy=strategy, seed=seed,
                       in_domain={"task": "gsm8k", "name": "addition", "metric": "accuracy", "n": 200, "base": 0.5,
                                  "trained": test},
                       validation={"task": "gsm8k", "name": "addition (validation)", "metric": "accuracy", "n": 64,
                                   "base": 0.5, "trained": val},
                       general={"base": {"demo_reverse": 1.0}, "trained": {"demo_reverse": held}})
        runs.append(point.name)
    (root / "sweep.json").write_text(json.dumps({"grid": grid, "seeds": seeds, "runs": runs}))
    return root


def test_each_strategy_is_chosen_on_validation_never_on_test(tmp_path: Path) -> None:
    # sft: 1e-4 is best on validation, 3e-4 on test — the choice must follow validation.
    root = _sweep_dir(tmp_path, {
        ("sft", "1e-4", 0): (0.80, 0.70, 0.90), ("sft", "3e-4", 0): (0.60, 0.95, 0.20),
        ("s3ft", "1e-4", 0): (0.70, 0.72, 0.99), ("s3ft", "3e-4", 0): (0.90, 0.90, 0.95),
        ("sft", "1e-4", 1): (0.82, 0.74, 0.88), ("sft", "3e-4", 1): (0.62, 0.93, 0.22),
        ("s3ft", "1e-4", 1): (0.70, 0.70, 0.97), ("s3ft", "3e-4", 1): (0.88, 0.92, 0.93),
    })
    runs = [load_run(p) for p in sorted((root / "runs").iterdir())]
    chosen = {c.strategy: (c.setting, sorted(r.seed for r in c.runs)) for c in choose(runs, ["train.lr"])}
    assert chosen == {"sft": ((1e-4,), [0, 1]), "s3ft": ((3e-4,), [0, 1])}

    md, png = write_sweep_report(root)
    text = md.read_text()
    assert "## Protocol" in text and "8 runs" in text and "validation rows carved from the training set" in text
    assert "The test set is not looked at to choose" in text
    lines = text.splitlines()
    # sft at 1e-4: validation (0.80, 0.82) → 81.0 ± 1.0; test (0.70, 0.74) → 72.0 ± 2.0; held-out (0.90, 0.88)
    assert "| sft | 0.0001 | 2 | 81.0 ± 1.0 | 72.0 ± 2.0 | +22.0 ± 2.0 | 89.0 ± 1.0 | -11.0 ± 1.0 |" in lines
    assert "| s3ft | 0.0003 | 2 | 89.0 ± 1.0 | 91.0 ± 1.0 | +41.0 ± 1.0 | 94.0 ± 1.0 | -6.0 ± 1.0 |" in lines
    assert "| base | — | — | 50.0 ± 6.2 | 50.0 ± 3.5 | — | 100.0 | — |" in lines
    assert png.read_bytes().startswith(PNG_MAGIC)
    from PIL import Image

    with Image.open(png) as image:  # the trade-off figure (6.4 × 4.8 in at 110 dpi), not the bars
        assert image.size == (704, 528)
        assert len(set(image.convert("RGB").getdata())) > 10


def test_standard_errors() -> None:
    assert with_error([0.56], 200) == "56.0 ± 3.5"
    assert with_error([0.5, 0.7]) == "60.0 ± 10.0"
    assert with_error([None]) == "—"


@pytest.mark.slow
def test_sweep_runs_the_grid_sharing_data_stages_and_the_base_eval(engine_workspace: Path, tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    from tests.engine_workspace import config_file
    from tests.test_run import REPO

    root = tmp_path / "sweep"
    train = {"launcher": "local", "max_steps": 2, "max_seq_len": 128, "micro_batch_tokens": 512,
             "gradient_checkpointing": False, "eval_fraction": 0.0, "save_every": 0, "export_dtype": "float32",
             "report_to": ["jsonl"]}
    config = config_file(engine_workspace, root, generation__backend="hf", eval__likelihood=False,
                         **{f"train__{k}": v for k, v in train.items()})
    cmd = [sys.executable, "-m", "s3ft.cli", "sweep", str(config), "--grid", "train.lr=1e-4,3e-4",
           "--grid", "selection.strategy=sft,s3ft", "--validation-rows", "2"]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=1800, check=False)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]

    names = ["lr1e-4-sft-seed0", "lr1e-4-s3ft-seed0", "lr3e-4-sft-seed0", "lr3e-4-s3ft-seed0"]
    assert json.loads((root / "sweep.json").read_text())["runs"] == names
    for name in names:
        run = root / "runs" / name
        results = json.loads((run / "eval" / "results.json").read_text())
        assert results["validation"]["n"] == 2 and results["in_domain"]["n"] == 6 and "trained" in results["validation"]
        assert len((run / "data" / "merged.jsonl").read_text().splitlines()) == 4  # 6 rows − 2 for validation
        assert (run / "data" / "rejects.jsonl").is_file()  # each run has its copy of the shared load's rejects
    stages = sorted(p.name.split("-")[0] for p in (root / "shared" / "stages").iterdir())
    # one generation, judging and paraphrase for both learning rates and both strategies (sft loads its own)
    assert stages.count("generate") == 1 and stages.count("judge") == 1 and stages.count("paraphrase") == 1
    assert len(list((root / "runs" / ".s3ft-cache" / "base-eval").iterdir())) == 1  # the base model, once
    report = (root / "report" / "report.md").read_text()
    assert "## Protocol" in report and "4 runs" in report and (root / "report" / "report.png").is_file()

    models = {name: (root / "runs" / name / "model" / "config.json").stat().st_mtime_ns for name in names}
    again = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=1800, check=False)
    assert again.returncode == 0, (again.stdout + again.stderr)[-3000:]
    assert models == {name: (root / "runs" / name / "model" / "config.json").stat().st_mtime_ns for name in names}
