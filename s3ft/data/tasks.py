"""Task adapters: how a raw row of each dataset format becomes an example.

An example is a plain dict: `id`, `question` (what the templates fill in), `gold` (the reference
response, a training target), `messages` (the chat prompt) and whatever its judge needs
(`answers`, `test`, `entry_point`, `test_list`, ...). An adapter raises `FieldError` for a row it
cannot use; the loader turns that into an error or a reject naming file, line and field.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from s3ft.data.prompts import Templates, chat, render


class FieldError(Exception):
    def __init__(self, field: str, reason: str):
        super().__init__(reason)
        self.field, self.reason = field, reason


def text(row: dict[str, Any], field: str) -> str:
    value = row.get(field)
    if value is None:
        raise FieldError(field, "missing")
    if not isinstance(value, str):
        raise FieldError(field, f"expected text, got {type(value).__name__}")
    if not value.strip():
        raise FieldError(field, "empty")
    return value


def text_list(row: dict[str, Any], field: str) -> list[str]:
    value = row.get(field)
    if value is None:
        raise FieldError(field, "missing")
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v.strip() for v in value):
        raise FieldError(field, "expected a non-empty list of non-empty strings")
    return value


def code_block(code: str) -> str:
    return f"```python\n{code.rstrip()}\n```"


def gsm8k(row: dict[str, Any]) -> dict[str, Any]:
    gold = text(row, "answer")
    if "####" not in gold:
        raise FieldError("answer", "expected a GSM8K answer ending '#### N'")
    return {"question": text(row, "question"), "gold": gold}


def humaneval(row: dict[str, Any]) -> dict[str, Any]:
    prompt = text(row, "prompt")
    return {
        "question": prompt,
        "gold": code_block(prompt + text(row, "canonical_solution")),
        "prompt": prompt,
        "test": text(row, "test"),
        "entry_point": text(row, "entry_point"),
    }


def mbpp(row: dict[str, Any]) -> dict[str, Any]:
    tests = text_list(row, "test_list")
    setup = row.get("test_setup_code") or ""
    return {
        "question": text(row, "text") if "text" in row else text(row, "prompt"),
        "gold": f"[BEGIN]\n{text(row, 'code').rstrip()}\n[DONE]",
        "tests": "\n".join(tests),
        "test_list": tests,
        "test_setup_code": setup,
    }


def nq_open(row: dict[str, Any]) -> dict[str, Any]:
    answers = text_list(row, "answer")
    return {"question": text(row, "question"), "gold": answers[0], "answers": answers}


TASKS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "gsm8k": gsm8k,
    "humaneval": humaneval,
    "mbpp": mbpp,
    "nq_open": nq_open,
}


def generic_fields(row: dict[str, Any], prompt_field: str, response_field: str, messages_field: str) -> dict[str, Any]:
    """prompt/response columns, or a chat list whose last assistant turn is the gold; other columns pass through."""
    extra = {k: v for k, v in row.items() if k not in (prompt_field, response_field, messages_field)}
    messages = row.get(messages_field)
    if messages is None:
        return {**extra, "question": text(row, prompt_field), "gold": text(row, response_field)}
    if not isinstance(messages, list) or not all(isinstance(m, dict) and "role" in m and "content" in m for m in messages):
        raise FieldError(messages_field, "expected a list of {role, content} messages")
    if len(messages) < 2 or messages[-1]["role"] != "assistant":
        raise FieldError(messages_field, "the last message must be the assistant's (the gold response)")
    users = [m["content"] for m in messages if m["role"] == "user"]
    if not users:
        raise FieldError(messages_field, "no user message")
    gold = messages[-1]["content"]
    if not isinstance(gold, str) or not gold.strip():
        raise FieldError(messages_field, "the assistant message is empty")
    return {**extra, "question": users[-1], "gold": gold, "messages": messages[:-1]}


def make_example(fields: dict[str, Any], example_id: str, templates: Templates) -> dict[str, Any]:
    messages = fields.pop("messages", None) or chat(templates, render(templates.prompt, fields))
    return {"id": example_id, "messages": messages, **fields}


def paraphrase_messages(example: dict[str, Any], templates: Templates) -> list[dict[str, str]]:
    return chat(templates, render(templates.paraphrase, example))
