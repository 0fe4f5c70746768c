"""Engines kept from one evaluation to the next: a run evaluates its base model and then the trained one,
a sweep many checkpoints of one model, and a fresh engine for each costs a Ray worker's start and vLLM's
(~20 s on 2 cores, minutes for a large model), where loading the next checkpoint into the running engine
takes milliseconds.

Between runs (a sweep), kept only where that is free: vLLM engines on CPUs, which then hold no
placement group (idle, an engine costs memory but no CPU, so training between two evaluations still
has every CPU; the pool still sends them to nodes with CPUs). Engines on GPUs hold the GPUs that
training needs, so there each run's evaluation starts its own. Within one evaluation (`reserve=True`:
nothing trains between the base and the trained model), engines are kept on GPUs too, in their
placement groups, as a fresh pool would hold them.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any, Self

from s3ft.config import GenerationConfig, ModelConfig
from s3ft.generation.ray_pool import GenerationPool, engines_on_gpu

log = logging.getLogger(__name__)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "special_tokens_map.json",
                   "chat_template.jinja", "vocab.json", "merges.txt")
CONFIG_NOISE = {"_name_or_path", "transformers_version"}  # differ between checkpoints of one architecture
DTYPE_KEYS = {"dtype", "torch_dtype"}  # the engine runs in model.dtype where that is not "auto"
TOKENIZER_NOISE = {"is_local", "local_files_only", "name_or_path"}  # written by saving, not read


class EngineKeeper:
    """`with EngineKeeper() as keeper:` around many runs; `keeper.pool(model, gen)` is a started pool
    serving that model, or None where engines are not kept (start one as usual). `reserve`: the kept
    engines hold their placement groups, for evaluations with no training between them."""

    def __init__(self, reserve: bool = False) -> None:
        self._reserve = reserve
        self._pool: GenerationPool | None = None
        self._key: str | None = None
        self.started = 0  # engine pools started
        self.loads = 0  # checkpoints loaded into a running pool

    def pool(self, model: ModelConfig, gen: GenerationConfig) -> GenerationPool | None:
        if gen.backend != "vllm" or (engines_on_gpu(gen) and not self._reserve):
            return None
        key = same_engine_key(model, gen)
        if self._pool is not None and key == self._key:
            if self._pool.model.path != model.path:
                log.info("generation: the running engine loads %s", model.path)
                self._pool.load(model.path)
                self.loads += 1
            return self._pool
        self.close()
        self._pool, self._key = GenerationPool(model, gen, reserve=self._reserve), key
        self.started += 1
        return self._pool

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
        self._pool = self._key = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def same_engine_key(model: ModelConfig, gen: GenerationConfig) -> str:
    """Equal for checkpoints one engine can serve in turn: the same settings but the path, the same
    architecture (config.json) and the same tokenizer files. A trained model's export differs from its
    base in what saving writes (its dtype, transformers' bookkeeping), which is left out where unread."""
    path = Path(model.path)
    config: dict[str, Any] = json.loads((path / "config.json").read_text())
    noise = CONFIG_NOISE | (DTYPE_KEYS if model.dtype != "auto" else set())
    tokenizer = {name: _tokenizer_digest(path / name) for name in TOKENIZER_FILES if (path / name).is_file()}
    return json.dumps({"model": model.model_dump(mode="json", exclude={"path"}), "gen": gen.model_dump(mode="json"),
                       "config": {k: v for k, v in config.items() if k not in noise},
                       "tokenizer": tokenizer}, sort_keys=True)


def _tokenizer_digest(path: Path) -> str:
    content = path.read_bytes()
    if path.suffix == ".json":
        data = json.loads(content)
        if isinstance(data, dict):
            data = {k: v for k, v in data.items() if k not in TOKENIZER_NOISE}
        content = json.dumps(data, sort_keys=True).encode()
    return hashlib.sha256(content).hexdigest()
