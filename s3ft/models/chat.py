"""The one chat renderer: the prompt a model generates from and the prompt it is trained on are the
same tokens because both come from here.

A prompt is rendered through the tokenizer's chat template with the assistant turn opened
(`add_generation_prompt=True`) and tokenized with `add_special_tokens=False` (the template already
holds BOS and the role markers). A training example is those prompt tokens, then the target's tokens
and EOS; only the target and EOS carry loss.

>>> from s3ft.models.tiny import build_char_tokenizer
>>> tok = build_char_tokenizer()
>>> prompt, target = encode_example(tok, [{"role": "user", "content": "1+1?"}], "2")
>>> tok.decode(prompt + target)
'<|user|>1+1?</s><|assistant|>2</s>'
>>> labels(prompt, target)[-2:] == target
True
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from s3ft.errors import ModelError

IGNORE = -100  # the label of a token that carries no loss (PyTorch's cross-entropy ignore_index)
Messages = list[dict[str, str]]


def render_prompt(tokenizer: Any, prompt: Messages | str) -> str:
    """The text a model continues with its answer. A chat list needs the tokenizer's chat template; a plain
    string prompt becomes the user turn when there is a template, and is taken as it is when there is none."""
    if not getattr(tokenizer, "chat_template", None):
        if isinstance(prompt, str):
            return prompt
        raise ModelError("the tokenizer has no chat template; use an instruct model or add a `chat_template` to "
                         "its tokenizer_config.json")
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def prompt_ids(tokenizer: Any, prompts: Sequence[Messages | str]) -> list[list[int]]:
    """Token ids of rendered prompts, exactly as the generation backends tokenize them."""
    if not prompts:
        return []
    return tokenizer([render_prompt(tokenizer, p) for p in prompts], add_special_tokens=False)["input_ids"]


def encode_examples(tokenizer: Any, prompts: Sequence[Messages | str],
                    targets: Sequence[str]) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, target ids + EOS) per example; one tokenizer call per side (fast tokenizers batch in Rust)."""
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ModelError("the tokenizer has no EOS token; s3ft appends EOS to every target")
    if not targets:
        return []
    target_ids = tokenizer(list(targets), add_special_tokens=False)["input_ids"]
    return [(p, t if t and t[-1] == eos else [*t, eos])
            for p, t in zip(prompt_ids(tokenizer, prompts), target_ids, strict=True)]


def encode_example(tokenizer: Any, prompt: Messages | str, target: str) -> tuple[list[int], list[int]]:
    return encode_examples(tokenizer, [prompt], [target])[0]


def labels(prompt: list[int], target: list[int]) -> list[int]:
    """Loss on the target and its EOS only: the prompt is context."""
    return [IGNORE] * len(prompt) + list(target)
