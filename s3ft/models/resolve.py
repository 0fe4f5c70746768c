"""Find the model (a local folder, or a hub id downloaded once) and render chat prompts with its tokenizer."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from s3ft.config import ModelConfig
from s3ft.errors import ModelError

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
    if cfg.build_if_missing == "demo":
        from s3ft.demo.pretrain import build_demo_model

        log.info("pretraining the demo's base model at %s (model.build_if_missing: demo; once, a few minutes)", local)
        return str(build_demo_model(local))
    if local.exists() or cfg.path.startswith((".", "/", "~")) or cfg.path.count("/") != 1:
        raise ModelError(f"model.path '{cfg.path}': no Hugging Face model there (expected a folder with config.json)")
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


def render_prompt(tokenizer: Any, messages: list[dict[str, str]]) -> str:
    """The chat template's text for a prompt, ready for generation (the backends add no special tokens)."""
    if not getattr(tokenizer, "chat_template", None):
        raise ModelError(
            "the tokenizer has no chat template; use an instruct model or add a `chat_template` to its tokenizer_config.json"
        )
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
