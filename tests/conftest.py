"""Fixtures shared by the whole suite: one Ray cluster, and tiny models built (and taught) once."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

# Before Ray starts, so that its workers inherit them: no hub on these machines.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# DeepSpeed's JIT-built ops (cpu_adam, for the offload tests) in this checkout's own cache, not in
# ~/.cache/torch_extensions, which every checkout shares: there a run killed while torch's loader held an
# op's lock file leaves it behind, and the next suite would wait on it for ever.
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(Path(__file__).resolve().parents[1] / ".cache" / "torch_extensions"))

# Short math questions and the answers a memorised model gives greedily, with wide margins.
SUMS = [(12, 7), (20, 5), (31, 4), (40, 8), (51, 6), (63, 2), (9, 9), (72, 11), (8, 15), (44, 44), (27, 3), (16, 61)]
MEMORIZED_PAIRS = [(f"What is {a}+{b}?", f"{a}+{b}={a + b}. The answer is {a + b}") for a, b in SUMS]


@pytest.fixture(scope="session")
def ray_session() -> Iterator[None]:
    """One small local Ray cluster for the whole test session."""
    import ray

    ray.init(num_cpus=4, num_gpus=0, include_dashboard=False, object_store_memory=256 * 2**20, logging_level="warning")
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random tiny Llama with the char-level chat tokenizer (read-only: copy it to change it)."""
    from s3ft.models.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="session")
def memorized_pairs() -> list[tuple[str, str]]:
    """(rendered chat prompt, response) for every pair the memorised model knows."""
    from s3ft.models.tiny import build_char_tokenizer

    tokenizer = build_char_tokenizer()
    return [
        (tokenizer.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True), a)
        for q, a in MEMORIZED_PAIRS
    ]


@pytest.fixture(scope="session")
def memorized_model_dir(tmp_path_factory: pytest.TempPathFactory, memorized_pairs: list[tuple[str, str]]) -> Path:
    """A tiny model trained until greedy decoding of each prompt gives its response (read-only)."""
    from s3ft.models.tiny import build_tiny_model
    from tests.tiny_training import memorize

    path = build_tiny_model(tmp_path_factory.mktemp("memorized") / "model")
    memorize(path, [prompt + answer + "</s>" for prompt, answer in memorized_pairs])
    return path


@pytest.fixture(scope="session")
def engine_workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Data and a memorised model whose S3FT outcome is known (tests/engine_workspace.py)."""
    from tests.engine_workspace import build_workspace

    return build_workspace(tmp_path_factory.mktemp("engine"))
