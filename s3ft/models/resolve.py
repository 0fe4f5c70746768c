"""Find the model (a local folder, or a hub id downloaded once), its tokenizer and its context length."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from s3ft.config import ModelConfig
from s3ft.errors import ModelError
from s3ft.models.chat import prompt_ids

log = logging.getLogger(__name__)


def resolve_model(cfg: ModelConfig) -> str:
    """A local folder holding a Hugging Face model, building the tiny one or downloading as configured."""
    local = Path(cfg.path).expanduser()
    if local.is_dir() and (local / "config.json").is_file():
        return str(local)
    if cfg.build_if_missing == "tiny":
        from s3ft.models.tiny import build_tiny_model

        log.info("building a tiny random Llama at %s (model.build_if_missing: tiny)", local)
        return str(build_tiny_model(local))
    if local.exists() or cfg.path.startswith((".", "/", "~")) or cfg.path.count("/") != 1:
        raise ModelError(f"model.path '{cfg.path}': no Hugging Face model there (expected a folder with config.json, "
                         "or a hub id of the form org/name)")
    return _download(cfg.path)


def _download(repo_id: str) -> str:
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(repo_id, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja"])
    except Exception as exc:  # the hub client raises many types; the user needs one message
        raise ModelError(
            f"model.path '{repo_id}' is not a local folder and could not be downloaded from the Hugging Face hub "
            f"({type(exc).__name__}). Download it where the hub is reachable and set model.path to the folder."
        ) from None


def load_tokenizer(path: str, trust_remote_code: bool = False) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)


def context_length(path: str, max_model_len: int | None) -> int | None:
    """The context the engines will serve: model.max_model_len, else the model's own."""
    if max_model_len:
        return max_model_len
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(path)
    return getattr(getattr(config, "text_config", config), "max_position_embeddings", None)


def prompt_fits(tokenizer: Any, context: int | None, max_tokens: int) -> Callable[[list[dict[str, str]]], str | None]:
    """A check for the load stage: why a prompt cannot be generated for (too long), or None."""

    def check(messages: list[dict[str, str]]) -> str | None:
        if context is None:
            return None
        length = len(prompt_ids(tokenizer, [messages])[0])
        if length + max_tokens > context:
            return (f"the prompt is {length} tokens; with generation.max_tokens {max_tokens} it exceeds the model's "
                    f"context of {context} tokens")
        return None

    return check

