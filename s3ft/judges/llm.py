"""The `llm` judge: a judge model, served like the generator, reads question, gold and prediction.

The three reach it as fenced data with the instruction after them (`fence`). Its verdict is read
from its own reply alone, from the last line outside any data block it echoed; a reply that says
neither yes nor no is judged incorrect with the reason `unparseable verdict`, so it is counted and
never trusted.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from s3ft.config import EndpointConfig, LLMJudgeConfig
from s3ft.errors import JudgeError
from s3ft.generation.base import Sampling
from s3ft.judges.base import Judge, Verdict, build_judge, register
from s3ft.judges.fence import DEFAULT_TEMPLATE, FIELDS, fence_nonce, outside_blocks, render_judge_prompt
from s3ft.judges.qa import gold_answers

if TYPE_CHECKING:
    from s3ft.judges.endpoint import EndpointClient

log = logging.getLogger(__name__)

YES = {"1", "yes", "correct", "true", "right"}
NO = {"0", "no", "incorrect", "false", "wrong", "not correct"}
_PREFIX = re.compile(r"^(?:final\s+)?(?:verdict|answer|judgement|judgment|grade)\s*[:=-]\s*", re.IGNORECASE)


def parse_verdict(reply: str, nonce: str | None = None) -> bool | None:
    """True/False from the reply's last non-empty line (outside blocks it echoed, given the row's
    nonce), None when that line is no verdict."""
    if nonce is not None:
        reply = outside_blocks(reply, nonce)
    lines = [line.strip() for line in reply.strip().splitlines() if line.strip()]
    if not lines:
        return None
    last = _PREFIX.sub("", lines[-1].strip("*_`#> ")).strip().strip(".!*_`\"'").strip().lower()
    if last in YES:
        return True
    if last in NO:
        return False
    return None


def judge_fields(row: Mapping[str, Any]) -> dict[str, str]:
    """The data the judge model reads: with several accepted answers (NQ-open's `answers`), the gold is all of them."""
    return {"question": str(row["question"]), "gold": " | ".join(gold_answers(row)), "response": str(row["response"])}


def judge_request(template: str, row: Mapping[str, Any], specials: Sequence[str] = ()) -> str:
    return render_judge_prompt(template, judge_fields(row), specials)


def special_tokens(tokenizer: Any) -> list[str]:
    """The tokenizer's special tokens as text: written in the data, they would be read as control tokens."""
    added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    return [*getattr(tokenizer, "all_special_tokens", []), *(t.content for t in added.values() if t.special)]


def row_nonce(row: Mapping[str, Any]) -> str:
    fields = judge_fields(row)
    return fence_nonce([fields[name] for name in FIELDS])


@register("llm")
class LLMJudge(Judge):
    required_fields = ("response", "question")  # and `answers` or `gold`: see missing_fields
    runs_in_driver = True  # it owns engines; whole shards come to it

    def __init__(self, settings: LLMJudgeConfig | Mapping[str, Any]):
        self.settings = LLMJudgeConfig.model_validate(settings)
        self.template = self.settings.template or DEFAULT_TEMPLATE  # a template of one's own was checked by the config
        self.audit = build_judge(self.settings.audit_with) if self.settings.audit_with else None
        self.audited = 0
        self._stack = contextlib.ExitStack()
        self._pool: Any = None
        self._tokenizer: Any = None
        self._client: EndpointClient | None = None

    def missing_fields(self, row: Mapping[str, Any]) -> Verdict | None:
        if (verdict := super().missing_fields(row)) is not None:
            return verdict
        if row.get("answers") is None and row.get("gold") is None:
            return Verdict(False, "error: missing field(s) answers or gold")
        return None

    def judge_batch(self, rows: Sequence[Mapping[str, Any]]) -> list[Verdict]:
        verdicts: list[Verdict | None] = [self.missing_fields(row) for row in rows]
        todo = [i for i, v in enumerate(verdicts) if v is None]
        # Served by our own engines, the judge's tokenizer is at hand; an endpoint's is not (known forms only).
        specials = special_tokens(self._engine()[1]) if todo and self.settings.endpoint is None else []
        requests = [[{"role": "user", "content": judge_request(self.template, rows[i], specials)}] for i in todo]
        replies = self._ask(requests) if todo else []
        for i, reply in zip(todo, replies, strict=True):
            verdicts[i] = self._verdict(rows[i], reply)
        return [v for v in verdicts if v is not None]

    def _verdict(self, row: Mapping[str, Any], reply: str) -> Verdict:
        decided = parse_verdict(reply, row_nonce(row))
        last = reply.strip().splitlines()[-1][:80] if reply.strip() else ""
        if decided is None:
            verdict = Verdict(False, f"unparseable verdict: {last!r}")
        else:
            verdict = Verdict(decided, f"llm judge: {'correct' if decided else 'incorrect'}")
        if self.audit is not None and self.audited < self.settings.audit_size:
            self.audited += 1
            return Verdict(verdict.correct, verdict.reason, audit=self.audit.judge_batch([row])[0].correct)
        return verdict

    def _ask(self, requests: list[list[dict[str, str]]]) -> list[str]:
        """The judge model's replies: from the OpenAI-compatible endpoint, else from engines of our own."""
        if (endpoint := self.settings.endpoint) is not None:
            return self._endpoint(endpoint).ask(requests)
        from s3ft.models.chat import render_prompt

        gen = self.settings.generation
        sampling = Sampling.from_config(gen)
        pool, tokenizer = self._engine()
        prompts = [render_prompt(tokenizer, messages) for messages in requests]
        # The pool gives each engine whole shards: one piece per engine, or one engine does all the work.
        per = -(-len(prompts) // gen.num_engines)
        pieces = [(start, prompts[start:start + per]) for start in range(0, len(prompts), per)]
        replies = dict(pool.generate_shards(pieces, sampling))
        return [c[0] for start, _ in pieces for c in replies[start]]

    def _endpoint(self, settings: EndpointConfig) -> EndpointClient:
        if self._client is None:
            from s3ft.judges.endpoint import EndpointClient

            self._client = EndpointClient(settings, self.settings.generation)
            self._stack.callback(self._client.close)
        return self._client

    def _engine(self) -> tuple[Any, Any]:
        """The judge model's engine pool and tokenizer, started on first use."""
        if self._pool is None:
            from s3ft.generation.ray_pool import GenerationPool
            from s3ft.models.resolve import load_tokenizer, resolve_model
            from s3ft.runtime.cluster import require_ray

            if self.settings.model is None:
                raise JudgeError("judge.llm: no model to serve (judge.llm.model.path) and no endpoint")
            require_ray()
            path = resolve_model(self.settings.model)
            self._tokenizer = load_tokenizer(path, self.settings.model.trust_remote_code)
            model = self.settings.model.model_copy(update={"path": path})
            self._pool = self._stack.enter_context(GenerationPool(model, self.settings.generation))
        return self._pool, self._tokenizer

    def close(self) -> None:
        if self._client is not None:
            log.info("llm judge endpoint: %d requests, %d replies from the cache, %d retries",
                     self._client.requested, self._client.reused, self._client.retried)
        self._stack.close()
        self._pool = self._client = None
