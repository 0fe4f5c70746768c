"""The Slurm launch scripts, `sbatch --nodes=2`, on a real two-node Slurm started here
(tests/slurm_cluster.py: a slurmd per node, each with its own hostname, address and pid namespace).

- launch/slurm/s3ft_ray.sbatch: a Ray head on the first node, a Ray worker on the second (token auth,
  free ports, node-local temp dirs), `ray job submit` of a reduced `s3ft run` whose two training ranks
  go to different nodes (SPREAD); the run directory ends up complete and records where each rank ran.
- launch/slurm/train_deepspeed.sbatch: torchrun on each node, one rank per node, rendezvous at the first
  node's address; it trains on an existing data/merged.jsonl and writes model/.

Where each rank ran is read from what the job wrote: logs/placement/train.json, gathered by rank 0 over
the training process group itself (hostname = the node's UTS hostname, its address, Ray's node id).

Skipped (with the reason) where the Slurm/munge binaries are missing, the tests do not run as root, or
the host cannot make namespaces.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.slurm_cluster import SlurmCluster, missing_requirements, processes_with_env, slurm_cluster
from tests.test_run import REPO, SAMPLE, assert_complete, free_port, reduced_config

pytestmark = pytest.mark.slow
SCRIPTS = REPO / "launch" / "slurm"


@pytest.fixture(scope="module")
def cluster() -> Iterator[SlurmCluster]:
    if reason := missing_requirements():
        pytest.skip(reason)
    with slurm_cluster() as c:
        yield c


def job_env(cluster: SlurmCluster, marker: str, **extra: str) -> dict[str, str]:
    """The submitting shell's environment (sbatch --export=ALL), with the repo's venv first on PATH and
    `marker` (S3FT_TEST_JOB), which every process the job starts inherits."""
    env = {**os.environ, **cluster.env, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "S3FT_TEST_JOB": marker, **extra}
    for key in ("RAY_ADDRESS", "SLURM_JOB_ID", "SLURM_JOBID"):
        env.pop(key, None)
    return env


def sbatch(cluster: SlurmCluster, script: Path, config: Path, log: Path, env: dict[str, str],
           timeout: float) -> None:
    """Submit the script with `--nodes=2` from the repo root, wait until the job has ended, then check it
    left nothing running; on failure the assertion carries the job's log tail."""
    cmd = ["sbatch", "--parsable", f"--nodes={len(cluster.nodes)}", "--export=ALL", f"--output={log}", "--time=15",
           str(script), str(config)]
    submitted = subprocess.run(cmd, check=False, cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert submitted.returncode == 0, submitted.stderr
    try:
        state, exit_code = cluster.wait_for_job(submitted.stdout.strip().split(";")[0], timeout)
    except TimeoutError:
        cluster.cancel_all()
        pytest.fail(f"{script.name} did not finish in {timeout:.0f}s\n{tail(log)}")
    assert (state, exit_code) == ("COMPLETED", "0:0"), (
        f"{script.name} ended {state}, exit code {exit_code}\n--- job log\n{tail(log)}\n{cluster.log_tail(1500)}"
    )
    assert_nothing_left(f"S3FT_TEST_JOB={env['S3FT_TEST_JOB']}", log)


def assert_nothing_left(marker: str, log: Path, grace: float = 30) -> None:
    """The job tore down what it started, on every node: no process with `marker` in its environment survives it."""
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


def ranks(out: Path) -> list[dict[str, object]]:
    """Where each training rank ran (rank, hostname, address, node_id, master), as the job recorded it."""
    return json.loads((out / "logs" / "placement" / "train.json").read_text())


def tail(log: Path, chars: int = 6000) -> str:
    return log.read_text(errors="replace")[-chars:] if log.is_file() else f"(no log at {log})"


def test_s3ft_ray_sbatch_runs_the_whole_job_on_two_nodes(cluster: SlurmCluster, tmp_path: Path,
                                                         tiny_model_dir: Path) -> None:
    out = tmp_path / "slurm_ray_run"
    config = reduced_config(tmp_path, tiny_model_dir, out, placement_strategy="SPREAD")
    # 2 logical CPUs per node (an engine or judges, and a training rank); Ray's temp dir on each node's own
    # scratch; the GCS and dashboard ports are the script's own free ones. The Ray client server port is
    # the one fixed default left, and the session's own Ray may hold it.
    env = job_env(cluster, secrets.token_hex(8), RAY_NUM_CPUS="2", RAY_TMPDIR=str(cluster.local_dir / "ray"),
                  RAY_START_ARGS=f"--ray-client-server-port={free_port()}")
    log = tmp_path / "s3ft_ray.log"
    sbatch(cluster, SCRIPTS / "s3ft_ray.sbatch", config, log, env, timeout=600)
    text = log.read_text()
    head, head_ip = next(iter(cluster.nodes.items()))  # the batch script runs on the allocation's first node
    assert f"ray head on {head} ({head_ip}:" in text, tail(log)
    assert "ready: 2 node(s), job agent at" in text, tail(log)  # s3ft wait-cluster, from Ray's state, before the submit
    assert "succeeded" in text.lower(), tail(log)  # ray job submit reports the job's final state
    assert_complete(out)
    placement = ranks(out)
    assert {(p["hostname"], p["address"]) for p in placement} == set(cluster.nodes.items()), placement
    assert len({p["node_id"] for p in placement}) == 2, placement  # two Ray nodes, by Ray's own node ids


def test_train_deepspeed_sbatch_trains_one_rank_per_node(cluster: SlurmCluster, tmp_path: Path,
                                                         tiny_model_dir: Path) -> None:
    out = tmp_path / "slurm_train_run"
    config = reduced_config(tmp_path, tiny_model_dir, out)
    (out / "data").mkdir(parents=True)
    rows = [json.loads(line) for line in SAMPLE.read_text().splitlines()[:8]]
    with (out / "data" / "merged.jsonl").open("w") as fh:
        for i, row in enumerate(rows):
            fh.write(json.dumps({"id": f"gsm8k-{i}", "messages": [{"role": "user", "content": row["question"]}],
                                 "gold": row["answer"], "target": row["answer"], "source": "gold"}) + "\n")
    log = tmp_path / "train_deepspeed.log"
    sbatch(cluster, SCRIPTS / "train_deepspeed.sbatch", config, log, job_env(cluster, secrets.token_hex(8)),
           timeout=420)
    text = log.read_text()
    (first, first_ip), (second, second_ip) = cluster.nodes.items()
    assert f"torchrun on 2 node(s) ({first} {second}) x 1 process(es), rendezvous {first_ip}:" in text, tail(log)
    placement = ranks(out)
    where = {p["rank"]: (p["hostname"], p["address"]) for p in placement}
    assert where == {0: (first, first_ip), 1: (second, second_ip)}, placement  # node rank = SLURM_NODEID
    assert {str(p["master"]).rsplit(":", 1)[0] for p in placement} == {first_ip}, placement  # both met at node 1
    assert (out / "model" / "config.json").is_file() and list((out / "model").glob("*.safetensors")), tail(log)
    steps = [json.loads(line) for line in (out / "logs" / "rows.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps] == [1, 2, 3], tail(log)
