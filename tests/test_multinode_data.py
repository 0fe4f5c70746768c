"""The data engine across the rig's nodes (a head without CPUs, two 1-CPU workers): the engines take
every CPU, and the judges still run — in the engines' CPUs, on both nodes; work that cannot be
scheduled at all is named within a minute, with what holds the resources."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.multinode import Rig

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "configs" / "data" / "gsm8k_sample.jsonl"


def data_config(tmp_path: Path, model: Path, out: Path, **generation: object) -> Path:
    config = {
        "output_dir": str(out),
        "model": {"path": str(model), "dtype": "float32"},
        "data": {"path": str(SAMPLE), "task": "gsm8k", "limit": 8},
        "generation": {"backend": "vllm", "max_tokens": 16, "shard_size": 2, "enforce_eager": True,
                       "num_engines": 2, **generation},
        "judge": {"kind": "math"},
    }
    path = tmp_path / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def s3ft(rig: Rig, *args: str, **popen: object) -> subprocess.Popen[str]:
    """An `s3ft` command whose driver joins the rig (from this machine's own address, like a login node)."""
    env = rig.client_env() | {"RAY_ADDRESS": rig.gcs_address, "S3FT_WATCHDOG_S": "20"}
    return subprocess.Popen([sys.executable, "-m", "s3ft.cli", *args], env=env, text=True, **popen)


def test_judges_run_while_the_engines_hold_every_cpu(multinode_rig: Rig, tmp_path: Path, tiny_model_dir: Path) -> None:
    rig = multinode_rig
    seen_before = {t["task_id"] for t in rig.ray_list("tasks", "name=judge_rows")}
    out = tmp_path / "data_run"
    proc = s3ft(rig, "data", str(data_config(tmp_path, tiny_model_dir, out)),
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    started = time.monotonic()
    log, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, log[-4000:]
    print(f"s3ft data on the rig: {time.monotonic() - started:.0f} s")
    ids = [json.loads(line)["id"] for line in (out / "data" / "merged.jsonl").read_text().splitlines()]
    assert len(ids) == len(set(ids)) == 8

    ips = rig.node_ips()
    engines = [a for a in rig.ray_list("actors", "class_name=_EngineActor") if a["job_id"] and a["state"] == "DEAD"]
    engine_ips = sorted(ips[a["node_id"]] for a in engines[-2:])
    assert engine_ips == ["127.0.0.3", "127.0.0.4"]  # one engine per 1-CPU node: they hold every CPU
    judged = [t for t in rig.ray_list("tasks", "name=judge_rows") if t["task_id"] not in seen_before]
    assert judged and all(t["state"] == "FINISHED" for t in judged)
    assert {ips[t["node_id"]] for t in judged} == {"127.0.0.3", "127.0.0.4"}  # in the engines' CPUs, both nodes
    assert "nothing finished for" not in log  # never stuck


def test_work_that_cannot_be_scheduled_is_named_within_a_minute(multinode_rig: Rig, tmp_path: Path,
                                                                tiny_model_dir: Path) -> None:
    """Three engines of one CPU on two 1-CPU nodes: the third cannot be placed; the run says so, and why."""
    rig = multinode_rig
    out = tmp_path / "stuck_run"
    proc = s3ft(rig, "data", str(data_config(tmp_path, tiny_model_dir, out, num_engines=3)),
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    started = time.monotonic()
    lines: list[str] = []
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line)
            if "nothing finished for" in line:
                break
        waited = time.monotonic() - started
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    said = lines[-1]
    print(f"named after {waited:.0f} s: {said}")
    assert "nothing finished for" in said, "".join(lines)[-4000:]
    assert waited < 60 + 20  # the driver's own start-up (~10-20 s) plus under a minute of silence
    assert "generate: " in said and "a placement group of ['{CPU: 1}'] (STRICT_PACK)" in said
    assert "127.0.0.3 {CPU: 0} of {CPU: 1}" in said and "127.0.0.4 {CPU: 0} of {CPU: 1}" in said
    assert "'s3ft engine 1'" in said and "'s3ft engine 2'" in said and "generation.num_engines" in said
