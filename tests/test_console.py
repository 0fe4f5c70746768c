"""The console shows s3ft's own lines; engines', Ray's and libraries' output goes to RUN/logs/s3ft.log,
`-v` brings it back, and Ray Train's placement-group cleaner no longer repeats its warning."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from s3ft.runtime import console
from tests.test_run import REPO, reduced_config

CLEANER = "Failed to query Ray Train Controller"
WORKER_LINE = re.compile(r"^\(\S+ pid=\d+")  # how Ray prefixes a worker's line on the driver's console
ANSI = re.compile(r"\x1b\[[0-9;]*m")  # Ray colours that prefix


def test_worker_output_goes_to_the_log_file_except_the_training_bar(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    console.setup(verbose=False)
    try:
        path = console.log_to(tmp_path / "run")
        assert console.log_to(tmp_path / "run") == path  # said once
        console._worker_lines({"pid": 7, "actor_name": "_EngineActor",
                               "lines": ["INFO engine core started", "\rtrain:  50%|█████     | 5/10"]})
        logging.getLogger("vllm.engine").warning("chatter")
        logging.getLogger("s3ft.pipeline.run").info("stage 2/4: train")
        console._worker_lines({"pid": 7, "actor_name": "RayTrainWorker",
                               "lines": ["train:  60%|██████    | 6/10", "train: 100%|██████████| 10/10"]})
        err = capsys.readouterr().err
        assert err.count("logs go to") == 1 and "stage 2/4: train" in err
        # the bar's redraws overwrite each other on one line, ended once it is full or when s3ft logs a line
        ended = r"\rtrain:  50%\|█████     \| 5/10\n\S.* INFO s3ft.pipeline.run: stage 2/4: train\n\rtrain:  60%"
        assert re.search(ended, err), err
        assert "\rtrain:  60%|██████    | 6/10\rtrain: 100%|██████████| 10/10\n" in err
        assert "engine core started" not in err and "chatter" not in err
        for handler in logging.getLogger().handlers:
            handler.flush()
        log = path.read_text()
        assert "(_EngineActor pid=7) INFO engine core started" in log and "chatter" in log
    finally:
        console.setup(verbose=True)
        logging.getLogger().handlers = []


def test_a_line_that_arrives_while_the_bar_is_open_starts_a_line_of_its_own(
        capsys: pytest.CaptureFixture[str]) -> None:
    """Ray forwards a worker's stdout and stderr apart: the rank's own line can come after the bar's first
    redraw (CI saw `train:   0%|...train: 4 rows ...` on one console line). A record the driver logs
    while the bar is open starts a line of its own too."""
    console.setup(verbose=False)
    try:
        console._worker_lines({"pid": 7, "actor_name": "RayTrainWorker", "lines": ["train:   0%|          | 0/4"]})
        console._worker_lines({"pid": 7, "actor_name": "RayTrainWorker", "lines": ["train: 4 rows, 4 steps"]})
        console._worker_lines({"pid": 7, "actor_name": "RayTrainWorker", "lines": ["train: 100%|██████████| 4/4",
                                                                                  "train: done"]})
        console._worker_lines({"pid": 7, "actor_name": "RayTrainWorker", "lines": ["train:  50%|█████     | 1/2"]})
        logging.getLogger("s3ft.pipeline.run").warning("a record of the driver's")
        err = capsys.readouterr().err
        assert err.startswith("\rtrain:   0%|          | 0/4\ntrain: 4 rows, 4 steps\n"
                              "\rtrain: 100%|██████████| 4/4\ntrain: done\n")
        assert re.search(r"\| 1/2\n\S.*WARNING s3ft.pipeline.run: a record of the driver's\n$", err), err
    finally:
        console.setup(verbose=True)
        logging.getLogger().handlers = []


STATUS_TABLE = ["======== Autoscaler status: 2026-12-05 01:25:46.926114 ========", "Node status",
                "Active:", " 1 node_1859ad0129a3bddec8ae035c6187fd56d31ffbdbb3f272de177074ba", "Resources",
                "Total Usage:", " 0.0/2.0 CPU", "Pending Demands:", " (no resource demands)"]


def test_the_autoscalers_status_table_stays_out_of_the_log(tmp_path: Path, ray_session: None) -> None:
    """Ray hands the driver the autoscaler's status table every 5 s; written to the log, it made 60-90 %
    of a run's lines. Its events are kept, as Ray's own printer keeps them; other workers' lines all."""
    console.setup(verbose=False)
    try:
        path = console.log_to(tmp_path / "run")
        console._worker_lines({"pid": "autoscaler", "lines": STATUS_TABLE})
        console._worker_lines({"pid": 7, "actor_name": "_EngineActor", "lines": STATUS_TABLE[:2]})
        for handler in logging.getLogger().handlers:
            handler.flush()
        log = path.read_text()
        assert "pid=autoscaler" not in log
        assert log.count("(_EngineActor pid=7)") == 2
    finally:
        console.setup(verbose=True)
        logging.getLogger().handlers = []


def test_libraries_progress_bars_go_to_the_log_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tqdm import tqdm

    console.setup(verbose=False)
    try:
        path = console.log_to(tmp_path / "run")
        capsys.readouterr()
        with console.libraries_to_log():
            for _ in tqdm(range(3), desc="Running generate_until requests"):
                pass
            print("a library's print")
        logging.getLogger("s3ft.eval.run").info("general benchmarks of the base model")
        shown = capsys.readouterr()
        assert "generate_until" not in shown.err + shown.out and "library's print" not in shown.err + shown.out
        assert "general benchmarks of the base model" in shown.err
        for handler in logging.getLogger().handlers:
            handler.flush()
        log = path.read_text()
        assert "libraries: Running generate_until requests: 100%" in log and "libraries: a library's print" in log
        assert "requests:   0%" not in log  # the bar's last redraw, not each one
    finally:
        console.setup(verbose=True)
        logging.getLogger().handlers = []
    with console.libraries_to_log():  # verbose: shown as they are
        print("shown")
    assert "shown" in capsys.readouterr().out


def _s3ft(*args: str) -> subprocess.CompletedProcess[str]:
    """The command's console output, colours removed."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    done = subprocess.run([sys.executable, "-m", "s3ft.cli", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=1800, check=False)
    return subprocess.CompletedProcess(done.args, done.returncode, ANSI.sub("", done.stdout), ANSI.sub("", done.stderr))


@pytest.mark.slow
def test_console_is_quiet_and_verbose_brings_everything_back(tmp_path: Path, tiny_model_dir: Path) -> None:
    """Training under Ray Train (the placement-group cleaner's home) and an evaluation with a vLLM engine
    (the engine's start-up chatter), then the same evaluation with -v."""
    out = tmp_path / "quiet_run"
    config = str(reduced_config(tmp_path, tiny_model_dir, out, launcher="ray"))
    base_only = ["--set", "selection.strategy=sft", "--set", "eval.models=[base]", "--set", "eval.likelihood=false"]
    shown = ""
    for command in (["data", config, *base_only], ["train", config, *base_only], ["eval", config, *base_only]):
        done = _s3ft(*command)
        assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
        shown += done.stdout + done.stderr
    log = (out / "logs" / "s3ft.log").read_text()
    assert shown.count(f"logs go to {out / 'logs' / 's3ft.log'}") == 3  # once per command
    assert "model written to" in shown and "evaluation of quiet_run" in shown
    assert len(re.findall(r"^train: \d+ rows", shown, re.M)) == 1  # Ray Train's print patch doubled it
    assert not [line for line in shown.splitlines() if WORKER_LINE.match(line)]  # no engine/worker chatter
    assert "Started a local Ray instance" not in shown and "Started a local Ray instance" in log
    assert re.search(r"\(_EngineActor pid=\d+\)", log)  # the engine's output went to the file
    assert CLEANER not in shown and CLEANER not in log  # the cause is gone, not just hidden
    assert "Autoscaler status" not in log  # Ray's status table every 5 s: once most of the log

    # fresh test rows (limit 3), so an engine starts again
    again = _s3ft("-v", "eval", config, *base_only, "--set", "eval.base_cache=false", "--set", "eval.limit=3")
    shown = again.stdout + again.stderr
    assert again.returncode == 0, shown[-3000:]
    assert [line for line in shown.splitlines() if WORKER_LINE.match(line)]  # -v: the engine speaks again
    assert "logs go to" not in shown
