"""Losing a node, on the rig (a head without CPUs, two 1-CPU workers): a worker node killed outright
during generation (every one of its processes at once, as when a machine dies) — the run finishes on
the other node, every row exactly once, and the log names the lost node and the shards redone; and a
killed run leaves no process behind."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

import psutil
import pytest

from tests.multinode import Rig
from tests.multinode.test_multinode_data import data_config, s3ft
from tests.multinode.test_multinode_run import SAMPLE, run_config

pytestmark = pytest.mark.slow


def generated_shards(out: Path) -> int:
    return len(list(out.glob("stages/generate-*/shard-*.jsonl")))


def run_processes(rig: Rig, *names: str) -> list[str]:
    """Processes on the rig's worker nodes that belong to a run: engine actors, any vLLM process."""
    found = []
    for node in ("s3ft-node1", "s3ft-node2"):
        for pid in rig.node_pids(node):
            try:
                title = " ".join(psutil.Process(pid).cmdline())
            except psutil.Error:
                continue
            if any(n in title for n in names):
                found.append(f"{node}: {pid} {title[:80]}")
    return found


def test_a_node_lost_during_generation(multinode_rig: Rig, tmp_path: Path, tiny_model_dir: Path) -> None:
    rig = multinode_rig
    out = tmp_path / "lost_node"
    config = data_config(tmp_path, tiny_model_dir, out, shard_size=1, max_tokens=48)
    proc = s3ft(rig, "data", str(config), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 600
        while generated_shards(out) < 1:
            assert proc.poll() is None and time.monotonic() < deadline, "generation never wrote a shard"
            time.sleep(0.2)
        killed = time.monotonic()
        rig.kill_node("s3ft-node2")
        _, err = proc.communicate(timeout=900)
        recovered = time.monotonic() - killed
    finally:
        if proc.poll() is None:
            proc.kill()
        rig.restart_node("s3ft-node2")
    assert proc.returncode == 0, err[-4000:]
    ids = [json.loads(line)["id"] for line in (out / "data" / "merged.jsonl").read_text().splitlines()]
    assert len(ids) == len(set(ids)) == 8  # every row exactly once
    # The cause reads "its node is lost" once Ray has marked the node dead, else the actor's error: the node
    # and the shard are named either way.
    redone = re.findall(r"shard (\d+) is redone: its engine on node 127\.0\.0\.4 \(s3ft-node2\) died", err)
    print(f"node lost after the first shard; run finished {recovered:.0f} s later; shards redone: {redone}")
    assert redone, err[-4000:]
    assert run_processes(rig, "_EngineActor", "VLLM::") == []


def test_a_killed_run_leaves_no_process_on_any_node(multinode_rig: Rig, tmp_path: Path, tiny_model_dir: Path) -> None:
    """The driver SIGKILLed mid-generation: its engine actors, their vLLM engine cores and every other
    process of the run are gone from every node shortly after."""
    rig = multinode_rig
    out = tmp_path / "killed_run"
    proc = s3ft(rig, "data", str(data_config(tmp_path, tiny_model_dir, out, shard_size=1, max_tokens=48)),
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 600
    while generated_shards(out) < 1:
        assert proc.poll() is None and time.monotonic() < deadline, "generation never wrote a shard"
        time.sleep(0.2)
    assert run_processes(rig, "_EngineActor")  # the engines run on the nodes now
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed = time.monotonic()
    while (left := run_processes(rig, "_EngineActor", "VLLM::")) and time.monotonic() - killed < 120:
        time.sleep(1)
    print(f"the killed run's processes were gone {time.monotonic() - killed:.0f} s after the kill")
    assert left == []


def test_a_node_lost_during_training_fails_clearly_and_the_rerun_resumes(multinode_rig: Rig, tmp_path: Path,
                                                                         tiny_model_dir: Path) -> None:
    """Two ranks on the two worker nodes; rank 1's node killed outright after a checkpoint: `s3ft train`
    ends within bounded time with the TrainingError naming the checkpoint. The same command, run again
    while the node is still away, says what it waits for; once the node is back it resumes from that
    checkpoint's step and finishes, each step trained once and every row in every epoch. (Stronger than
    killing one rank's process: its node, and everything on it, is gone.)"""
    rig = multinode_rig
    out = tmp_path / "node_lost"
    (out / "data").mkdir(parents=True)
    rows = [json.loads(line) for line in SAMPLE.read_text().splitlines()[:8]]
    (out / "data" / "merged.jsonl").write_text("".join(
        json.dumps({"id": f"r{i}", "messages": [{"role": "user", "content": r["question"]}], "target": r["answer"],
                    "source": "gold"}) + "\n" for i, r in enumerate(rows)))
    config = str(run_config(tmp_path, tiny_model_dir, out, max_steps=40, save_every=1))
    proc = s3ft(rig, "train", config, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    rerun, lost = None, None
    try:
        deadline = time.monotonic() + 600
        while not list((out / "checkpoints").glob("step_*/meta.json")):
            assert proc.poll() is None and time.monotonic() < deadline, "training ended before its first checkpoint"
            time.sleep(0.2)
        ranks = {r["rank"]: r for r in json.loads((out / "logs" / "placement" / "train.json").read_text())}
        lost = ranks[1]["hostname"]
        assert ranks[0]["hostname"] != lost
        killed = time.monotonic()
        rig.kill_node(lost)
        _, err = proc.communicate(timeout=600)
        failed_after = time.monotonic() - killed
        assert proc.returncode == 2, err[-4000:]
        message = re.search(r"s3ft train: error: training failed: .*", err)
        assert message, err[-4000:]
        resumable = re.search(r"resume from the checkpoint of step (\d+) \((\S+)\)", message[0])
        assert resumable and Path(resumable[2]).is_dir(), message[0]
        # Ours once Ray counts the node dead ("the node of rank 1, ADDRESS (HOST), is lost"), else gloo's peer error
        assert ranks[1]["address"] in message[0], message[0]
        assert not (out / "model").exists()

        started = time.monotonic()
        rerun = s3ft(rig, "train", config, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        output = Lines(rerun)
        waiting = output.wait_for("train: nothing finished for", timeout_s=180)
        said_after = time.monotonic() - started
        back = time.monotonic()
        rig.restart_node(lost)
        rejoined, lost = time.monotonic() - back, None
        rerun.wait(timeout=900)
        resumed_in = time.monotonic() - back
    finally:
        for p in (proc, rerun):
            if p is not None and p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
        if lost is not None:
            rig.restart_node(lost)
    print(f"rank 1's node ({ranks[1]['hostname']}) killed after a checkpoint: TrainingError {failed_after:.1f} s "
          f"later. The same command run again said what it waits for {said_after:.0f} s later; the node back in "
          f"{rejoined:.0f} s, it resumed from step {resumable[1]} and finished {resumed_in:.0f} s after the node "
          f"was restarted.\nThe error: {message[0]}\nThe wait: {waiting}")
    assert "Ray cannot place a placement group" in waiting, waiting
    assert rerun.returncode == 0, output.text()[-4000:]
    assert f"40 steps from step {resumable[1]}," in output.text(), output.text()[-4000:]
    assert (out / "model" / "config.json").is_file() and list((out / "model").glob("*.safetensors"))
    steps = [json.loads(line) for line in (out / "logs" / "rows.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps] == list(range(1, 41))
    seen = Counter(i for s in steps for i in s["ids"])
    assert len(seen) == 8 and max(seen.values()) - min(seen.values()) <= 1  # whole epochs, the last maybe cut


class Lines:
    """A process's output, read by a thread, so a test can wait for a line with a deadline."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self._lines: list[str] = []
        assert proc.stdout is not None
        self._proc = proc
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        for line in self._proc.stdout or ():
            self._lines.append(line)

    def wait_for(self, text: str, timeout_s: float) -> str:
        deadline = time.monotonic() + timeout_s
        while True:
            found = next((line for line in list(self._lines) if text in line), None)
            if found is not None:
                return found.strip()
            assert self._proc.poll() is None and time.monotonic() < deadline, f"no '{text}':\n{self.text()[-4000:]}"
            time.sleep(0.5)

    def text(self) -> str:
        self._thread.join(timeout=30 if self._proc.poll() is not None else 0)
        return "".join(self._lines)
