"""`s3ft run` as users launch it: through `ray job submit` to a token-auth head, and killed during
training then run again (it resumes from the checkpoint)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from s3ft.runtime.ports import free_port

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "configs" / "data" / "gsm8k_sample.jsonl"

pytestmark = pytest.mark.slow


def reduced_config(tmp_path: Path, model: Path, out: Path, **train: object) -> Path:
    """A smoke run small enough for CI: 8 rows, 2 ZeRO-3 ranks under Ray Train, a small eval."""
    config = {
        "output_dir": str(out),
        "model": {"path": str(model), "dtype": "float32"},
        "data": {"path": str(SAMPLE), "task": "gsm8k", "limit": 8},
        "generation": {"backend": "vllm", "max_tokens": 16, "shard_size": 4, "enforce_eager": True},
        "train": {"num_workers": 2, "max_steps": 3, "max_seq_len": 1024, "micro_batch_tokens": 1024,
                  "truncation": "truncate_left", "save_every": 1, "eval_fraction": 0.0, **train},
        "eval": {"data_path": str(SAMPLE), "split": "train", "limit": 4, "general_tasks": [], "likelihood_rows": 2},
    }
    path = tmp_path / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def assert_complete(out: Path) -> None:
    assert sum(1 for _ in (out / "data" / "merged.jsonl").open()) == 8
    assert (out / "model" / "config.json").is_file() and list((out / "model").glob("*.safetensors"))
    results = json.loads((out / "eval" / "results.json").read_text())
    assert results["in_domain"]["n"] == 4 and "trained" in results["in_domain"]
    assert (out / "report.md").is_file() and (out / "report.png").read_bytes()[:4] == b"\x89PNG"


def test_ray_job_submit_runs_the_whole_job(tmp_path: Path, tiny_model_dir: Path) -> None:
    """A Ray head with token auth, started here; launch/submit.sh submits `s3ft run`; the job SUCCEEDS."""
    env = {**os.environ, "RAY_AUTH_MODE": "token", "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    env.pop("RAY_ADDRESS", None)
    port, dashboard = free_port(), free_port()
    temp_dir = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # short: Ray's socket paths must fit in 107 bytes
    head = subprocess.Popen(
        ["ray", "start", "--head", f"--port={port}", f"--dashboard-port={dashboard}", "--dashboard-host=127.0.0.1",
         "--num-cpus=4", "--num-gpus=0", "--include-dashboard=true", "--block", f"--temp-dir={temp_dir}",
         # the session's own Ray (conftest) holds the default agent port: the job agent must not collide
         f"--dashboard-agent-listen-port={free_port()}", f"--ray-client-server-port={free_port()}"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    try:
        address = f"http://127.0.0.1:{dashboard}"
        deadline = time.time() + 120
        while subprocess.run(["ray", "status", "--address", f"127.0.0.1:{port}"], env=env, capture_output=True).returncode:
            assert head.poll() is None and time.time() < deadline, "the Ray head did not come up"
            time.sleep(2)
        # `ray status` answers before the head's job agent registers; submitting then is refused
        ready = subprocess.run(["s3ft", "wait-cluster", "--address", f"127.0.0.1:{port}", "--timeout", "120"],
                               env=env, capture_output=True, text=True)
        assert ready.returncode == 0, ready.stderr[-2000:]
        out = tmp_path / "job_run"
        config = reduced_config(tmp_path, tiny_model_dir, out)
        result = subprocess.run([str(REPO / "launch" / "submit.sh"), "--address", address, str(config)],
                                env=env, capture_output=True, text=True, timeout=900)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        jobs = subprocess.run(["ray", "job", "list", "--address", address], env=env, capture_output=True, text=True)
        assert "SUCCEEDED" in jobs.stdout and "FAILED" not in jobs.stdout, jobs.stdout
        assert_complete(out)
    finally:
        if head.poll() is None:
            os.killpg(head.pid, signal.SIGTERM)
            head.wait(timeout=60)
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_run_killed_during_training_resumes_from_its_checkpoint(tmp_path: Path, tiny_model_dir: Path) -> None:
    out = tmp_path / "killed_run"
    config = reduced_config(tmp_path, tiny_model_dir, out, max_steps=6, launcher="torchrun")
    cmd = [sys.executable, "-m", "s3ft.cli", "run", str(config)]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 600
    while not list((out / "checkpoints").glob("step_*/meta.json")):
        assert proc.poll() is None and time.time() < deadline, "s3ft run ended before its first checkpoint"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "model").exists()
    steps_before = {p.parent.name for p in (out / "checkpoints").glob("step_*/meta.json")}

    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert_complete(out)
    trained = [json.loads(line)["step"] for line in (out / "logs" / "rows.jsonl").read_text().splitlines()]
    assert trained == list(range(1, 7))  # every step exactly once: resumed, nothing repeated or skipped
    assert steps_before  # it was killed after a checkpoint, so the re-run had one to resume from
    log = (out / "logs" / "s3ft.log").read_text()
    assert f"the running engine loads {out / 'model'}" in log  # the base model's engine scores the trained
