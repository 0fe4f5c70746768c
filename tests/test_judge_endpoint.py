"""The LLM judge through an OpenAI-compatible endpoint: a small real HTTP server of the test's own on
loopback answers as the test says (replies, 429, 5xx, 401, 404, slowness), and the real `openai`
client talks to it. The vLLM server test is in test_judge_endpoint_vllm.py."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from s3ft.errors import JudgeError
from s3ft.judges.llm import LLMJudge

# (request number from 0, request body) -> (status, extra headers, reply text or error body, delay in s)
Script = Callable[[int, dict[str, Any]], tuple[int, dict[str, str], str, float]]


def grade(body: dict[str, Any]) -> str:
    """The server's judge model: 'correct' when the response block equals the gold block."""
    prompt = body["messages"][-1]["content"]
    found = {name: text for name, _, text in re.findall(r"<<<(\w+) (\w+)>>>\n(.*?)\n<<<END \1 \2>>>", prompt, re.DOTALL)}
    return "correct" if found["RESPONSE"] == found["GOLD"] else "incorrect"


def answers(status: int = 200, delay: float = 0.0) -> Script:
    return lambda n, body: (status, {}, grade(body) if status == 200 else "{}", delay)


class Server:
    def __init__(self, script: Script):
        self.script, self.requests, self.in_flight, self.max_in_flight = script, [], 0, 0
        self.lock = threading.Lock()

    def handle(self, handler: BaseHTTPRequestHandler) -> None:
        body = json.loads(handler.rfile.read(int(handler.headers["Content-Length"])))
        with self.lock:
            n = len(self.requests)
            self.requests.append({"path": handler.path, "auth": handler.headers.get("Authorization"), "body": body})
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            status, headers, text, delay = self.script(n, body)
            threading.Event().wait(delay)
            payload = json.dumps(completion(text) if status == 200 else {"error": {"message": f"status {status}"}}).encode()
            handler.send_response(status)
            for key, value in {"Content-Type": "application/json", **headers}.items():
                handler.send_header(key, value)
            handler.send_header("Content-Length", str(len(payload)))
            handler.end_headers()
            handler.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up waiting (the timeout test)
        finally:
            with self.lock:
                self.in_flight -= 1


def completion(text: str) -> dict[str, Any]:
    return {"id": "c", "object": "chat.completion", "created": 0, "model": "judge",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}


@contextmanager
def serving(script: Script) -> Iterator[tuple[Server, str]]:
    server = Server(script)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            server.handle(self)

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield server, f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(10)


def judge(base_url: str, tmp_path: Path | None = None, **endpoint: Any) -> LLMJudge:
    settings = {"base_url": base_url, "model": "judge", "backoff_s": 0.05, "timeout_s": 10} | endpoint
    if tmp_path is not None:
        settings["cache_dir"] = str(tmp_path / "cache")
    return LLMJudge({"endpoint": settings, "generation": {"max_tokens": 16}})


ROWS = [{"question": f"What is {i}+{i}?", "gold": str(2 * i), "response": str(2 * i if i % 3 else 2 * i + 1)} for i in range(12)]
EXPECTED = [bool(i % 3) for i in range(12)]


def test_replies_come_bounded_and_are_cached_so_a_rerun_asks_nothing(tmp_path: Path) -> None:
    with serving(answers(delay=0.2)) as (server, url):
        first = judge(url, tmp_path, max_concurrency=3)
        assert [v.correct for v in first.judge_batch(ROWS)] == EXPECTED
        assert len(server.requests) == 12 and server.max_in_flight == 3  # bounded, and the bound is used
        assert server.requests[0]["path"] == "/v1/chat/completions"
        assert server.requests[0]["body"]["model"] == "judge" and server.requests[0]["body"]["max_tokens"] == 16
        first.close()
        again = judge(url, tmp_path)
        assert [v.correct for v in again.judge_batch(ROWS)] == EXPECTED
        assert len(server.requests) == 12  # every reply came from the cache
        again.close()
    offline = judge(url, tmp_path)  # the server is gone: the cache alone answers
    assert [v.correct for v in offline.judge_batch(ROWS[:4])] == EXPECTED[:4]
    other_model = judge(url, tmp_path, model="another-judge", max_retries=0)
    with pytest.raises(JudgeError, match="gave up after 1 attempts: APIConnectionError"):
        other_model.judge_batch(ROWS[:1])  # another model's replies are not this one's


def test_429_and_5xx_are_retried_with_backoff(tmp_path: Path) -> None:
    statuses = [429, 429, 503, 500]

    def script(n: int, body: dict[str, Any]) -> tuple[int, dict[str, str], str, float]:
        if n < len(statuses):
            return statuses[n], {"Retry-After": "0"} if statuses[n] == 429 else {}, "{}", 0.0
        return 200, {}, grade(body), 0.0

    with serving(script) as (server, url):
        endpoint = judge(url, max_concurrency=1)
        assert [v.correct for v in endpoint.judge_batch(ROWS[1:3])] == [True, True]
        assert len(server.requests) == 6 and endpoint._client is not None and endpoint._client.retried == 4


@pytest.mark.parametrize(
    ("status", "message"),
    [
        (401, r"401, the API key was refused \(from \$S3FT_TEST_JUDGE_KEY\)"),
        (403, r"403, this key may not use model 'judge'"),
        (404, r"404, no model 'judge' there, or base_url is wrong \(it usually ends in /v1\)"),
        (400, r"HTTP 400"),
    ],
)
def test_401_403_404_stop_at_once_with_what_to_fix(status: int, message: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("S3FT_TEST_JUDGE_KEY", "sk-test-123")
    with serving(answers(status)) as (server, url):
        with pytest.raises(JudgeError, match=message):
            judge(url, api_key_env="S3FT_TEST_JUDGE_KEY", max_concurrency=1).judge_batch(ROWS[:3])
        assert len(server.requests) == 1  # not retried, and no further request started
        assert server.requests[0]["auth"] == "Bearer sk-test-123"


def test_an_unset_key_variable_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("S3FT_TEST_JUDGE_KEY", raising=False)
    with pytest.raises(JudgeError, match="environment variable S3FT_TEST_JUDGE_KEY is unset or empty"):
        judge("http://127.0.0.1:9/v1", api_key_env="S3FT_TEST_JUDGE_KEY").judge_batch(ROWS[:1])


def test_a_slow_server_times_out_and_is_retried_then_given_up_on() -> None:
    with serving(answers(delay=1.5)) as (server, url):
        with pytest.raises(JudgeError, match="gave up after 2 attempts: APITimeoutError"):
            judge(url, timeout_s=0.3, max_retries=1).judge_batch(ROWS[:1])
        assert len(server.requests) == 2


def test_the_config_takes_an_endpoint_or_a_model_not_both(tmp_path: Path) -> None:
    from s3ft.config import JudgeConfig, build_config, build_section
    from s3ft.errors import ConfigError

    endpoint = {"base_url": "http://127.0.0.1:8000/v1", "model": "judge"}
    with pytest.raises(ConfigError, match="exactly one of model"):
        build_section(JudgeConfig, {"kind": "llm", "llm": {"model": {"path": "m"}, "endpoint": endpoint}}, "judge")
    cfg = build_config({"output_dir": str(tmp_path / "run"), "model": {"path": "m"},
                        "data": {"path": "d.jsonl", "task": "nq_open"}, "judge": {"kind": "llm", "llm": {"endpoint": endpoint}}})
    assert cfg.judge.llm is not None and cfg.judge.llm.endpoint is not None
    assert cfg.judge.llm.endpoint.cache_dir == str(tmp_path / "run" / "cache")  # a resumed run finds its replies


def test_replies_already_paid_for_are_kept_when_the_stage_stops(tmp_path: Path) -> None:
    """The first request meets a 401 once the two beside it are in flight; those still arrive and are cached."""
    all_sent = threading.Event()

    def script(n: int, body: dict[str, Any]) -> tuple[int, dict[str, str], str, float]:
        if n == 2:
            all_sent.set()
        if n == 0:
            assert all_sent.wait(30), "the client never had three requests in flight"
            return 401, {}, "{}", 0.0
        return 200, {}, grade(body), 0.5

    with serving(script) as (server, url):
        stopped = judge(url, tmp_path, max_concurrency=3)
        with pytest.raises(JudgeError, match="401"):
            stopped.judge_batch(ROWS[:3])
        assert len(server.requests) == 3
        assert stopped._client is not None and stopped._client.requested == 2
        stopped.close()
    resumed = judge(url, tmp_path, max_retries=0)  # the server is gone: two rows come from the cache
    with pytest.raises(JudgeError, match="APIConnectionError"):
        resumed.judge_batch(ROWS[:3])
    assert resumed._client is not None and resumed._client.reused == 2
