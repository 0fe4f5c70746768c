"""Nothing waits in silence: on the rig (a head without CPUs, two 1-CPU workers), work that cannot be
scheduled is named within a minute, with what holds the resources; engines that reserve no CPU go to
the nodes with CPUs, not the head. (That the judges run while the engines hold every CPU is checked by
the whole job, tests/multinode/test_multinode_run.py.)"""

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

REPO = Path(__file__).resolve().parents[2]
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
    assert "'s3ft engine 1 (pool " in said and "'s3ft engine 2 (pool " in said and "generation.num_engines" in said


def test_an_output_dir_that_is_not_shared_is_refused_naming_the_node(multinode_rig: Rig, tmp_path: Path,
                                                                    tiny_model_dir: Path) -> None:
    """s3ft-node2 has a private directory where the others see the real one: refused before any work."""
    rig = multinode_rig
    out = Path(rig.nodes["s3ft-node2"].private_dirs[0]) / "run"
    proc = s3ft(rig, "data", str(data_config(tmp_path, tiny_model_dir, out)),
                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    started = time.monotonic()
    _, err = proc.communicate(timeout=300)
    print(f"refused in {time.monotonic() - started:.0f} s: {err.strip().splitlines()[-1]}")
    assert proc.returncode == 2, err[-3000:]
    assert f"output_dir {out} is not the same directory on every node of the Ray cluster" in err
    assert "node s3ft-node2 (127.0.0.4): does not see the file the driver wrote there" in err
    assert "s3ft-node1" not in err and "s3ft-head" not in err
    assert not (out / "stages").exists()  # refused before any work


# Engines kept between a sweep's runs reserve nothing (training needs every CPU between evaluations); here
# started while a training-like placement group holds every worker's CPU, as the sweep's next run would.
KEPT_ENGINES = """
import json, sys, ray
from ray.util.placement_group import placement_group
from s3ft.config import GenerationConfig, ModelConfig
from s3ft.generation.ray_pool import GenerationPool
ray.init(log_to_driver=False)
ray.get(placement_group([{"CPU": 1}] * 2, strategy="STRICT_SPREAD").ready(), timeout=120)
gen = GenerationConfig(backend="vllm", num_engines=2, enforce_eager=True, cpu_kvcache_gib=0.25)
with GenerationPool(ModelConfig(path=sys.argv[1], dtype="float32"), gen, reserve=False) as pool:
    print(json.dumps(pool.placement))
"""


def test_engines_that_reserve_no_cpu_still_run_on_nodes_with_cpus(multinode_rig: Rig, tiny_model_dir: Path) -> None:
    """Asking for no CPU, an engine could land on the head started with none (as a sweep's kept eval engine
    did); they go to the nodes with CPUs, one each."""
    rig = multinode_rig
    out = subprocess.run([sys.executable, "-c", KEPT_ENGINES, str(tiny_model_dir)],
                         env=rig.client_env() | {"RAY_ADDRESS": rig.gcs_address}, check=False, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    placement = json.loads(out.stdout.strip().splitlines()[-1])
    assert sorted((p["hostname"], p["address"]) for p in placement) == [("s3ft-node1", "127.0.0.3"),
                                                                          ("s3ft-node2", "127.0.0.4")]
