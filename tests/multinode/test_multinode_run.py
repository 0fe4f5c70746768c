"""The whole job across the rig's nodes (a head without CPUs, two 1-CPU workers), submitted with
launch/submit.sh as users do: where everything ran is read from Ray's own state API, and the 2-node
training gives the same losses and weights as 2 ranks on one node."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from tests.multinode import Rig

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "configs" / "data" / "gsm8k_sample.jsonl"
WORKERS = ["127.0.0.3", "127.0.0.4"]


def run_config(tmp_path: Path, model: Path, out: Path, **train: object) -> Path:
    config = {
        "output_dir": str(out),
        "seed": 0,
        "model": {"path": str(model), "dtype": "float32"},
        "data": {"path": str(SAMPLE), "task": "gsm8k", "limit": 8},
        "generation": {"backend": "vllm", "max_tokens": 16, "shard_size": 2, "enforce_eager": True, "num_engines": 2},
        "judge": {"kind": "math"},
        "train": {"num_workers": 2, "placement_strategy": "SPREAD", "max_steps": 3, "max_seq_len": 1024,
                  "micro_batch_tokens": 1024, "truncation": "truncate_left", "save_every": 0, "eval_fraction": 0.0,
                  "export_dtype": "float32", "report_to": ["jsonl"], **train},
        "eval": {"data_path": str(SAMPLE), "split": "train", "limit": 4, "general_tasks": [], "likelihood": False},
    }
    path = tmp_path / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def losses(run: Path) -> list[float]:
    lines = [json.loads(line) for line in (run / "logs" / "metrics.jsonl").read_text().splitlines()]
    return [m["loss"] for m in lines if m.get("split") == "train"]


def weights(run: Path) -> dict[str, torch.Tensor]:
    return {k: v for f in sorted((run / "model").glob("*.safetensors")) for k, v in load_file(f).items()}


def test_the_whole_job_runs_across_nodes(multinode_rig: Rig, tmp_path: Path, tiny_model_dir: Path) -> None:
    rig = multinode_rig
    out = tmp_path / "across"
    config = run_config(tmp_path, tiny_model_dir, out)
    started = time.monotonic()
    submitted = subprocess.run([str(REPO / "launch" / "submit.sh"), "--address", rig.dashboard, str(config)],
                               check=False, env=rig.client_env(), capture_output=True, text=True, timeout=1500)
    took = time.monotonic() - started
    assert submitted.returncode == 0, submitted.stdout[-4000:] + submitted.stderr[-2000:]
    job = next(j for j in rig.ray_list("jobs") if str(config) in j["entrypoint"])
    assert job["status"] == "SUCCEEDED", job
    ips = rig.node_ips()

    # Ray's state API, for this job only
    actors = rig.ray_list("actors", f"job_id={job['job_id']}")
    engines = [ips[a["node_id"]] for a in actors if a["class_name"] == "_EngineActor"]
    ranks = [ips[a["node_id"]] for a in actors if "TrainWorker" in a["class_name"]]
    judged = [ips[t["node_id"]] for t in rig.ray_list("tasks", f"job_id={job['job_id']}", "name=judge_rows")]
    print(f"whole job on the rig: {took:.0f} s; engines on {engines}; ranks on {ranks}; "
          f"judge tasks per node { {ip: judged.count(ip) for ip in set(judged)} }")
    assert set(engines) == set(WORKERS) and engines.count(WORKERS[0]) == engines.count(WORKERS[1])  # a pair per pool
    assert set(judged) == set(WORKERS)  # judges ran on both nodes, in the CPUs the engines hold
    assert sorted(ranks) == WORKERS

    # the run's own record agrees, and the rendezvous crossed the two addresses
    for pool in ("generate", "eval-base", "eval-trained"):  # each pool: one engine per node
        placed = json.loads((out / "logs" / "placement" / f"{pool}.json").read_text())
        assert sorted(e["address"] for e in placed) == WORKERS, pool
        assert {e["hostname"] for e in placed} == {"s3ft-node1", "s3ft-node2"}, pool
    train = sorted(json.loads((out / "logs" / "placement" / "train.json").read_text()), key=lambda r: r["rank"])
    assert sorted(r["address"] for r in train) == WORKERS and train[0]["address"] != train[1]["address"]
    master = train[0]["master"].split(":")[0]
    assert {r["master"] for r in train} == {train[0]["master"]} and master == train[0]["address"]
    assert {r["node_id"] for r in train} == {a["node_id"] for a in actors if "TrainWorker" in a["class_name"]}

    # exported, loads, evaluated
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(out / "model")
    results = json.loads((out / "eval" / "results.json").read_text())
    assert results["in_domain"]["n"] == 4 and "trained" in results["in_domain"]

    # the same training on one node, 2 ranks, same seed and data: same losses and weights
    one = tmp_path / "one_node"
    (one / "data").mkdir(parents=True)
    shutil.copy(out / "data" / "merged.jsonl", one / "data" / "merged.jsonl")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    local = subprocess.run([sys.executable, "-m", "s3ft.cli", "train",
                            str(run_config(tmp_path, tiny_model_dir, one, launcher="torchrun"))], env=env,
                           check=False, capture_output=True, text=True, timeout=900)
    assert local.returncode == 0, local.stderr[-4000:]
    across, single = losses(out), losses(one)
    assert len(across) == len(single) == 3
    assert max(abs(a - b) for a, b in zip(across, single, strict=True)) <= 1e-5, (across, single)
    wa, wb = weights(out), weights(one)
    assert wa.keys() == wb.keys()
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) <= 1e-6
