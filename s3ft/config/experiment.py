"""The whole experiment config: its sections composed, loaded from YAML with `--set` overrides.

Each stage takes only its own section; `stage_key` hashes the sections that affect a stage so a
changed setting gets a fresh cache directory instead of silently reusing stale shards.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, Field, ValidationError, model_validator

from s3ft.config.judges import JudgeConfig
from s3ft.config.section import Section
from s3ft.config.stages import (
    ClusterConfig,
    DataConfig,
    EvalConfig,
    GenerationConfig,
    ModelConfig,
    ParaphraseConfig,
    RayConfig,
    SelectionConfig,
)
from s3ft.config.train import TrainConfig
from s3ft.errors import ConfigError

SectionT = TypeVar("SectionT", bound=Section)


class Config(Section):
    output_dir: str = Field(description="Run directory: every stage's output, the model, the report.")
    seed: int = 0
    stages_dir: str | None = Field(
        None, description="Where the data stages' shards go (default: output_dir). Runs naming one folder share the "
        "generation, judging and paraphrase they have in common (a sweep's runs do)."
    )
    model: ModelConfig
    data: DataConfig
    generation: GenerationConfig = Field(default_factory=GenerationConfig)
    judge: JudgeConfig = Field(default_factory=JudgeConfig)
    paraphrase: ParaphraseConfig = Field(default_factory=ParaphraseConfig)
    selection: SelectionConfig = Field(default_factory=SelectionConfig)
    train: TrainConfig = Field(default_factory=TrainConfig, description="Fine-tuning: DeepSpeed ZeRO-3, full or LoRA.")
    eval: EvalConfig = Field(default_factory=EvalConfig)
    cluster: ClusterConfig | None = Field(None, description="The cluster this config is for (optional; see s3ft plan).")
    ray: RayConfig = Field(default_factory=RayConfig, description="The local Ray cluster, when s3ft starts one.")

    @model_validator(mode="after")
    def _consistent(self) -> Config:
        endpoint = self.judge.llm.endpoint if self.judge.llm else None
        if endpoint is not None and endpoint.cache_dir is None:  # a resumed run finds the replies it paid for
            endpoint.cache_dir = str(Path(self.output_dir) / "cache")
        if self.generation.backend == "hf" and self.generation.tensor_parallel_size > 1:
            raise ValueError("generation.tensor_parallel_size > 1 needs backend 'vllm'")
        if self.cluster is not None and self.cluster.gpus_per_node > 0:
            tp, engines = self.generation.tensor_parallel_size, self.generation.num_engines
            gpus = self.cluster.nodes * self.cluster.gpus_per_node
            if tp > self.cluster.gpus_per_node:
                raise ValueError(f"generation.tensor_parallel_size {tp} > cluster.gpus_per_node "
                                 f"{self.cluster.gpus_per_node}: one engine's GPUs must share a node")
            if engines * tp > gpus:
                raise ValueError(f"generation.num_engines {engines} x tensor_parallel_size {tp} = {engines * tp} GPUs, "
                                 f"but the cluster has {gpus}")
            if self.train.num_workers > gpus:
                raise ValueError(f"train.num_workers {self.train.num_workers} > the cluster's {gpus} GPUs")
        return self


def parse_override(item: str) -> tuple[list[str], Any]:
    key, sep, raw = item.partition("=")
    if not sep or not key:
        raise ConfigError(f"--set expects key.sub=value, got '{item}'")
    return key.split("."), yaml.safe_load(raw) if raw else ""


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for item in overrides:
        path, value = parse_override(item)
        node = data
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"--set {item}: '{part}' is a value, not a section")
            node = child
        node[path[-1]] = value
    return data


def _allowed_keys(cls: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """The keys the section holding `loc` accepts, for "unknown key" messages."""
    for part in loc[:-1]:
        field = cls.model_fields.get(str(part))
        annotation = field.annotation if field else None
        candidates = [a for a in (annotation, *getattr(annotation, "__args__", ())) if isinstance(a, type)]
        nested = [a for a in candidates if issubclass(a, BaseModel)]
        if not nested:
            return []
        cls = nested[0]
    return sorted(cls.model_fields)


def _describe(errors: list[dict[str, Any]], cls: type[BaseModel]) -> str:
    lines = []
    for err in errors:
        key = ".".join(str(p) for p in err["loc"]) or "(top level)"
        if err["type"] == "extra_forbidden":
            allowed = _allowed_keys(cls, err["loc"])
            lines.append(f"  {key}: unknown key" + (f"; allowed here: {', '.join(allowed)}" if allowed else ""))
        else:
            lines.append(f"  {key}: {err['msg']} (got {err.get('input')!r})")
    return "\n".join(lines)


def build_section(cls: type[SectionT], data: Any, source: str) -> SectionT:
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{source} is invalid:\n{_describe(exc.errors(), cls)}") from None


def build_config(data: dict[str, Any], source: str = "config") -> Config:
    return build_section(Config, data, source)


def load_config(path: str | Path, overrides: list[str] | None = None) -> Config:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    return build_config(apply_overrides(data, overrides or []), str(path))


def save_config(config: Config, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))


def stage_key(*parts: BaseModel | dict[str, Any] | str) -> str:
    """A short stable hash of the settings that decide a stage's output."""
    blob = json.dumps(
        [p.model_dump(mode="json") if isinstance(p, BaseModel) else p for p in parts], sort_keys=True
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:12]
