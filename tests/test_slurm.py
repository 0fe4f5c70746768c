"""The Slurm launch scripts on a real one-node Slurm started here (tests/slurm_cluster.py).

- launch/slurm/s3ft_ray.sbatch: a Ray head on the node (token auth), `ray job submit` of a reduced
  `s3ft run`, teardown; the run directory ends up complete.
- launch/slurm/train_deepspeed.sbatch: torchrun with 2 ranks (rendezvous from the Slurm variables)
  trains on an existing data/merged.jsonl and writes model/.

Skipped (with the reason) where the Slurm/munge binaries are missing or the tests do not run as root.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.slurm_cluster import SlurmCluster, processes_with_env, slurm_cluster
from tests.test_run import REPO, SAMPLE, assert_complete, free_port, reduced_config

pytestmark = pytest.mark.slow
SCRIPTS = REPO / "launch" / "slurm"


@pytest.fixture(scope="module")
def cluster() -> Iterator[SlurmCluster]:
    with slurm_cluster() as c:
        yield c


def job_env(cluster: SlurmCluster, **extra: str) -> dict[str, str]:
    """The submitting shell's environment, with the repo's venv first on PATH (sbatch --export=ALL)."""
    env = {**os.environ, **cluster.env, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", **extra}
    for key in ("RAY_ADDRESS", "SLURM_JOB_ID", "SLURM_JOBID"):
        env.pop(key, None)
    return env


def sbatch(cluster: SlurmCluster, script: Path, config: Path, log: Path, env: dict[str, str],
           timeout: float) -> None:
    """`sbatch --wait` the script from the repo root; on failure the assertion carries the job's log tail."""
    cmd = ["sbatch", "--wait", "--nodes=1", "--export=ALL", f"--output={log}", "--time=15", str(script), str(config)]
    try:
        result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        cluster.cancel_all()
        pytest.fail(f"{script.name} did not finish in {timeout:.0f}s\n{tail(log)}")
    assert result.returncode == 0, (
        f"{script.name} failed (sbatch exit {result.returncode})\n{result.stdout}{result.stderr}\n"
        f"--- job log\n{tail(log)}\n{cluster.log_tail(1500)}"
    )


def assert_nothing_left(marker: str, log: Path, grace: float = 30) -> None:
    """The job tore down what it started: no process with `marker` in its environment survives it."""
    deadline = time.time() + grace
    while (pids := processes_with_env(marker.encode())) and time.time() < deadline:
        time.sleep(1)
    commands = []
    for pid in pids:
        try:
            commands.append(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:200])
        except OSError:
            pass
    assert not commands, "left running after the job ended:\n" + "\n".join(commands) + "\n" + tail(log)


def tail(log: Path, chars: int = 6000) -> str:
    return log.read_text(errors="replace")[-chars:] if log.is_file() else f"(no log at {log})"


def test_s3ft_ray_sbatch_runs_the_whole_job(cluster: SlurmCluster, tmp_path: Path, tiny_model_dir: Path) -> None:
    out = tmp_path / "slurm_ray_run"
    config = reduced_config(tmp_path, tiny_model_dir, out)
    ray_tmp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # short: Ray's socket paths must fit in 107 bytes
    # Free ports, so the job's Ray never meets another Ray on this machine (the script's defaults are
    # Ray's); 4 logical CPUs like tests/test_run.py (2 train ranks + generation on a 2-core node).
    env = job_env(cluster, RAY_PORT=str(free_port()), RAY_DASHBOARD_PORT=str(free_port()), RAY_NUM_CPUS="4",
                  RAY_TMPDIR=ray_tmp,
                  RAY_START_ARGS=f"--ray-client-server-port={free_port()} "
                                 f"--dashboard-agent-listen-port={free_port()} --include-dashboard=true")
    log = tmp_path / "s3ft_ray.log"
    try:
        sbatch(cluster, SCRIPTS / "s3ft_ray.sbatch", config, log, env, timeout=600)
        assert_nothing_left(f"RAY_TMPDIR={ray_tmp}", log)  # head, raylet, workers, the job's driver
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    text = log.read_text()
    assert "ready: 1 node(s), job agent at" in text, tail(log)  # s3ft wait-cluster, before the submit
    assert "succeeded" in text.lower(), tail(log)  # ray job submit reports the job's final state
    assert_complete(out)


def test_train_deepspeed_sbatch_trains_on_merged_rows(cluster: SlurmCluster, tmp_path: Path,
                                                      tiny_model_dir: Path) -> None:
    out = tmp_path / "slurm_train_run"
    config = reduced_config(tmp_path, tiny_model_dir, out)
    (out / "data").mkdir(parents=True)
    rows = [json.loads(line) for line in SAMPLE.read_text().splitlines()[:8]]
    with (out / "data" / "merged.jsonl").open("w") as fh:
        for i, row in enumerate(rows):
            fh.write(json.dumps({"id": f"gsm8k-{i}", "messages": [{"role": "user", "content": row["question"]}],
                                 "gold": row["answer"], "target": row["answer"], "source": "gold"}) + "\n")
    port = str(free_port())
    env = job_env(cluster, NPROC_PER_NODE="2", MASTER_PORT=port)
    log = tmp_path / "train_deepspeed.log"
    sbatch(cluster, SCRIPTS / "train_deepspeed.sbatch", config, log, env, timeout=420)
    assert_nothing_left(f"MASTER_PORT={port}", log)
    text = log.read_text()
    assert f"torchrun on 1 node(s) x 2 process(es), rendezvous {socket.gethostname().split('.')[0]}:" in text, tail(log)
    assert (out / "model" / "config.json").is_file() and list((out / "model").glob("*.safetensors")), tail(log)
    steps = [json.loads(line) for line in (out / "logs" / "rows.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps] == [1, 2, 3], tail(log)
