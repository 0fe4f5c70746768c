"""The LLM judge's prompts sent to any OpenAI-compatible server (vLLM's, a provider's).

At most `max_concurrency` requests are in flight; each has a timeout; a 429, a 5xx, a timeout or a
dropped connection is retried with exponential backoff (a server's `Retry-After` is honoured), long
enough to outlive a server restart; 401, 403 and 404 stop the stage at once with what to fix. Every
reply is stored in a SQLite cache keyed by a hash of (model, messages, sampling) as it arrives, so a
stage that is killed, or a run that is resumed, never asks the same question twice.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import sqlite3
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any

from s3ft.config import EndpointConfig, GenerationConfig
from s3ft.errors import JudgeError

log = logging.getLogger(__name__)
Messages = list[dict[str, str]]
_MAX_BACKOFF_S = 30.0


class _Stopped(Exception):
    """A request not sent because another one already stopped the stage."""


class ReplyCache:
    """Replies by key in one SQLite file; written by one thread (the judge's), read before asking."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False)  # used by one thread at a time, maybe not its maker's
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS replies (key TEXT PRIMARY KEY, model TEXT, reply TEXT)")
        self._db.commit()

    def get(self, key: str) -> str | None:
        row = self._db.execute("SELECT reply FROM replies WHERE key = ?", (key,)).fetchone()
        return None if row is None else row[0]

    def put(self, key: str, model: str, reply: str) -> None:
        self._db.execute("INSERT OR REPLACE INTO replies VALUES (?, ?, ?)", (key, model, reply))
        self._db.commit()

    def __len__(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM replies").fetchone()[0]

    def close(self) -> None:
        self._db.close()


class EndpointClient:
    """Chat completions for many prompts, bounded, retried and cached. Counts what it asked and reused."""

    def __init__(self, settings: EndpointConfig, generation: GenerationConfig):
        import openai

        self.settings, self.generation = settings, generation
        api_key = "EMPTY"  # a local server takes any key; a real one comes only from the named variable
        if settings.api_key_env:
            api_key = os.environ.get(settings.api_key_env, "")
            if not api_key:
                raise JudgeError(f"judge.llm.endpoint.api_key_env: environment variable {settings.api_key_env} is unset or empty")
        self._client = openai.OpenAI(base_url=settings.base_url, api_key=api_key, timeout=settings.timeout_s, max_retries=0)
        self.cache = ReplyCache(Path(settings.cache_dir) / "judge_endpoint.sqlite") if settings.cache_dir else None
        self.requested = self.reused = self.retried = 0
        self._fatal: JudgeError | None = None  # the first error that stops the stage: later requests do not start

    def ask(self, prompts: Sequence[Messages]) -> list[str]:
        keys = [self._key(messages) for messages in prompts]
        replies: list[str | None] = [self.cache.get(k) if self.cache is not None else None for k in keys]
        todo = [i for i, r in enumerate(replies) if r is None]
        self.reused += len(prompts) - len(todo)
        if todo:
            self._fatal = None
            pool = ThreadPoolExecutor(max_workers=self.settings.max_concurrency, thread_name_prefix="judge-endpoint")
            futures = {pool.submit(self._complete, prompts[i]): i for i in todo}
            try:
                for future in as_completed(futures):
                    self._keep(future.result(), futures[future], replies, keys)
            except _Stopped:
                raise (self._fatal or JudgeError("judge endpoint: stopped")) from None
            finally:
                pool.shutdown(wait=True, cancel_futures=True)
                for future, i in futures.items():  # after an error: keep what was paid for
                    if replies[i] is None and future.done() and not future.cancelled() and future.exception() is None:
                        self._keep(future.result(), i, replies, keys)
        return [r or "" for r in replies]

    def _keep(self, reply: str, i: int, replies: list[str | None], keys: list[str]) -> None:
        replies[i] = reply
        self.requested += 1
        if self.cache is not None:
            self.cache.put(keys[i], self.settings.model, reply)

    def _key(self, messages: Messages) -> str:
        gen = self.generation
        blob = json.dumps([self.settings.model, messages, gen.max_tokens, gen.temperature, gen.top_p, gen.stop, gen.seed])
        return hashlib.sha256(blob.encode()).hexdigest()

    def _complete(self, messages: Messages) -> str:
        import openai

        gen, settings = self.generation, self.settings
        for attempt in range(settings.max_retries + 1):
            if self._fatal is not None:
                raise _Stopped
            try:
                response = self._client.chat.completions.create(
                    model=settings.model, messages=messages, max_tokens=gen.max_tokens,  # type: ignore[arg-type]
                    temperature=gen.temperature, top_p=gen.top_p, stop=list(gen.stop) or None, seed=gen.seed,
                )
                return response.choices[0].message.content or ""
            except openai.AuthenticationError as err:
                raise self._stop(f"judge endpoint {settings.base_url}: 401, the API key was refused "
                                 f"({self._key_source()}): {_detail(err)}") from None
            except openai.PermissionDeniedError as err:
                raise self._stop(f"judge endpoint {settings.base_url}: 403, this key may not use model "
                                 f"'{settings.model}': {_detail(err)}") from None
            except openai.NotFoundError as err:
                raise self._stop(f"judge endpoint {settings.base_url}: 404, no model '{settings.model}' there, or "
                                 f"base_url is wrong (it usually ends in /v1): {_detail(err)}") from None
            except (openai.RateLimitError, openai.InternalServerError, openai.APIConnectionError) as err:
                if attempt == settings.max_retries:
                    raise self._stop(f"judge endpoint {settings.base_url}: gave up after {attempt + 1} attempts: "
                                     f"{type(err).__name__}: {_detail(err)}") from None
                self.retried += 1
                wait = _backoff(err, attempt, settings.backoff_s)
                log.warning("judge endpoint: %s; retry %d/%d in %.1f s", type(err).__name__, attempt + 1,
                            settings.max_retries, wait)
                time.sleep(wait)
            except openai.APIStatusError as err:
                raise self._stop(f"judge endpoint {settings.base_url}: HTTP {err.status_code}: {_detail(err)}") from None
        raise AssertionError("unreachable: the loop returns or raises")

    def _stop(self, message: str) -> JudgeError:
        """The error that ends the stage; requests not yet sent are not sent."""
        error = JudgeError(message)
        if self._fatal is None:
            self._fatal = error
        return error

    def _key_source(self) -> str:
        return f"from ${self.settings.api_key_env}" if self.settings.api_key_env else "none set: judge.llm.endpoint.api_key_env"

    def close(self) -> None:
        self._client.close()
        if self.cache is not None:
            self.cache.close()


def _backoff(err: Exception, attempt: int, first_s: float) -> float:
    """The server's Retry-After where it gives one, else first_s · 2^attempt with jitter, capped."""
    response: Any = getattr(err, "response", None)
    retry_after = response.headers.get("retry-after") if response is not None else None
    if retry_after is not None:
        try:
            return min(max(float(retry_after), 0.0), _MAX_BACKOFF_S)
        except ValueError:
            pass
    return min(first_s * 2**attempt, _MAX_BACKOFF_S) * random.uniform(0.8, 1.2)


def _detail(err: Exception) -> str:
    text = str(err)
    return text if len(text) <= 300 else text[:297] + "..."
