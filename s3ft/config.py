"""Experiment config: one YAML per experiment, validated before any work starts.

Each stage takes only its own section; `stage_key` hashes the sections that affect a stage so a
changed setting gets a fresh cache directory instead of silently reusing stale shards.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, Field, ValidationError, model_validator

from s3ft.errors import ConfigError, JudgeError
from s3ft.section import Section
from s3ft.train.config import TrainConfig

TaskName = Literal["gsm8k", "humaneval", "mbpp", "nq_open", "generic"]


SectionT = TypeVar("SectionT", bound=Section)


class ModelConfig(Section):
    path: str = Field(description="Local model folder (Hugging Face format) or a hub id.")
    build_if_missing: Literal["none", "tiny", "demo"] = Field(
        "none", description="If nothing is at `path`, write a model there: tiny (a random Llama, for smoke tests) or "
        "demo (the tiny Llama pretrained on the demo's tasks, a few minutes on CPU)."
    )
    trust_remote_code: bool = Field(False, description="Run code shipped with the model; off unless asked.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    max_model_len: int | None = Field(None, gt=0, description="Context length; default: the model's own.")


class DataConfig(Section):
    path: str = Field(description="JSONL or parquet file, a `datasets.save_to_disk` folder, or a hub dataset name.")
    task: TaskName = Field(description="Task adapter: how rows become prompts, golds and judge fields.")
    split: str = Field("train", description="Split to take from a dataset dict (disk folder or hub).")
    limit: int | None = Field(None, gt=0, description="Use only the first N rows.")
    on_bad_row: Literal["error", "skip"] = Field(
        "error", description="error: stop at the first bad row; skip: write it to data/rejects.jsonl with its reason."
    )
    prompt_template: str | None = Field(None, description="YAML file overriding the task's prompt templates.")
    prompt_field: str = Field("prompt", description="generic task: column with the prompt text.")
    response_field: str = Field("response", description="generic task: column with the gold response.")
    messages_field: str = Field("messages", description="generic task: column with a chat list (used if present).")


class GenerationConfig(Section):
    backend: Literal["vllm", "hf"] = "vllm"
    num_engines: int = Field(1, gt=0, description="Data-parallel engines (Ray actors).")
    tensor_parallel_size: int = Field(1, gt=0, description="GPUs per vLLM engine (one node, placement group).")
    device: Literal["auto", "cuda", "cpu"] = Field("auto", description="auto: cuda when the Ray cluster has GPUs.")
    max_tokens: int = Field(256, gt=0)
    temperature: float = Field(0.0, ge=0.0, description="0 is greedy (the default, as in the paper).")
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    stop: list[str] = Field(default_factory=list, description="Extra stop strings; EOS always stops.")
    seed: int = 0
    shard_size: int = Field(64, gt=0, description="Rows per shard: the unit of resume and of work per engine.")
    batch_size: int = Field(32, gt=0, description="hf backend: prompts per generate call.")
    gpu_memory_utilization: float = Field(0.85, gt=0.0, le=1.0)
    cpu_kvcache_gib: float = Field(1.0, gt=0.0, description="vLLM on CPU: KV cache size in GiB (exact, may be fractional).")
    enforce_eager: bool = Field(False, description="vLLM: skip graph capture/compilation (faster start, slower decode).")
    shards_in_flight: int = Field(2, gt=0, description="Shards per engine at once: vLLM batches them together.")
    cpus_per_engine: int = Field(1, gt=0)


class EndpointConfig(Section):
    base_url: str = Field(description="The server's OpenAI API root, e.g. http://127.0.0.1:8000/v1 (vLLM's `vllm serve`).")
    model: str = Field(description="The model name the server serves (as /v1/models lists it).")
    api_key_env: str | None = Field(None, description="Environment variable that holds the API key; none sends no key (a local server).")
    max_concurrency: int = Field(8, gt=0, description="Requests in flight at once.")
    timeout_s: float = Field(120.0, gt=0, description="Timeout of one request, in seconds.")
    max_retries: int = Field(8, ge=0, description="Retries of a request after a 429, a 5xx, a timeout or a dropped connection.")
    backoff_s: float = Field(1.0, gt=0, description="Wait before the first retry; doubles each time up to 30 s, or the server's Retry-After.")
    cache_dir: str | None = Field(None, description="Folder of the reply cache keyed by (model, prompt); in a run, default OUTPUT_DIR/cache.")


class LLMJudgeConfig(Section):
    model: ModelConfig | None = Field(None, description="The judge model served in Ray actors (often a larger instruct model than the one trained).")
    endpoint: EndpointConfig | None = Field(None, description="Instead of `model`: an OpenAI-compatible server that serves the judge model.")
    generation: GenerationConfig = Field(
        default_factory=lambda: GenerationConfig(max_tokens=64), description="How the judge model is served."
    )
    template: str | None = Field(None, description="Judge prompt: {question}, {gold}, {response} become fenced data blocks, {nonce} their code; the instruction must follow them.")
    audit_with: str | None = Field(None, description="A rule judge kind (qa, math) to compare verdicts with on a sample.")
    audit_size: int = Field(100, gt=0, description="How many rows the audit compares.")

    @model_validator(mode="after")
    def _one_judge_model_and_a_template_that_reads_the_answer_as_data(self) -> LLMJudgeConfig:
        if (self.model is None) == (self.endpoint is None):
            raise ValueError("judge.llm needs exactly one of model (served in Ray actors) and endpoint (an OpenAI-compatible server)")
        if self.template is not None:
            from s3ft.judges.fence import check_template

            try:
                check_template(self.template)
            except ConfigError as err:
                raise ValueError(str(err)) from None
        return self


class JudgeConfig(Section):
    kind: str = Field("math", description="math | qa | code | llm | python (then `target`).")
    match: Literal["exact", "contains"] = Field("exact", description="qa: exact match, or a gold as a whole-word span.")
    target: str | None = Field(None, description="python judge: 'package.module:function'.")
    options: dict[str, Any] = Field(default_factory=dict, description="Extra keyword options of the judge (code: timeout_s, memory_mb, num_workers).")
    llm: LLMJudgeConfig | None = Field(None, description="llm judge: its model, serving and prompt.")
    num_workers: int = Field(0, ge=0, description="Parallel Ray tasks; 0 means one per CPU of the cluster.")

    @model_validator(mode="after")
    def _kind_has_its_settings(self) -> JudgeConfig:
        if self.kind == "python" and not self.target:
            raise ValueError("judge.kind 'python' needs judge.target: 'package.module:function'")
        if self.kind == "llm" and self.llm is None:
            raise ValueError("judge.kind 'llm' needs a judge.llm section with model.path or an endpoint")
        from s3ft.judges.run import check_judge_config  # the registry imports this module

        try:
            check_judge_config(self)
        except JudgeError as err:
            raise ValueError(str(err)) from None
        return self


class ParaphraseConfig(Section):
    template: str | None = Field(None, description="Override of the task's paraphrase prompt ({question}, {gold}).")
    leak_check: bool = Field(True, description="Refuse paraphrases that mention the reference, the rewriting or the prompt's framing: their rows train on gold.")
    leak_phrases: list[str] | None = Field(None, description="Phrases that mark a leaking paraphrase (case-insensitive, whole words); none: the task's defaults (s3ft/data/leaks.py).")
    extra_leak_phrases: list[str] = Field(default_factory=list, description="Phrases added to leak_phrases or to the task's defaults.")


class SelectionConfig(Section):
    strategy: Literal["sft", "ssr", "s3ft", "rft"] = Field(
        "s3ft", description="sft: gold; ssr: self else gold; s3ft: self else paraphrase else gold; rft: k samples."
    )
    num_samples: int = Field(4, gt=0, description="rft: samples per example.")
    sample_temperature: float = Field(0.7, gt=0.0, description="rft: sampling temperature.")


class EvalConfig(Section):
    data_path: str | None = Field(
        None, description="The task's test split, in data.path's formats; none skips the in-domain evaluation."
    )
    split: str = Field("test", description="Split to take from a dataset dict.")
    limit: int | None = Field(None, gt=0, description="Evaluate only the first N test rows.")
    models: list[Literal["base", "trained"]] = Field(
        default_factory=lambda: ["base", "trained"], description="Which models to evaluate."
    )
    general_tasks: list[str] = Field(
        default_factory=lambda: ["mmlu", "truthfulqa_mc2", "hellaswag", "winogrande", "arc_challenge"],
        description="lm-evaluation-harness tasks for general ability ([] skips them).",
    )
    general_backend: Literal["hf", "vllm"] = Field("hf", description="lm-eval model type.")
    general_limit: float | None = Field(None, gt=0, description="lm-eval: examples per task (smoke runs).")
    general_batch_size: int = Field(8, gt=0)
    include_path: str | None = Field(None, description="A folder of extra lm-eval task YAMLs (local benchmarks).")
    num_fewshot: int | None = Field(None, ge=0)
    likelihood: bool = Field(True, description="Report the base model's NLL of the targets by source (paper, Table 1).")
    likelihood_rows: int | None = Field(200, gt=0, description="Rows per source for the likelihood diagnostic.")


class ClusterConfig(Section):
    """The cluster a config is meant for: `s3ft plan` checks the layout against it, and config
    validation refuses layouts that cannot exist on it."""

    nodes: int = Field(1, gt=0)
    gpus_per_node: int = Field(8, ge=0)
    gpu_memory_gib: float = Field(80.0, gt=0, description="Memory of one GPU.")
    cpu_memory_gib: float = Field(1024.0, gt=0, description="Host memory of one node (ZeRO offload lives here).")


class RayConfig(Section):
    """The Ray cluster s3ft starts for itself when RAY_ADDRESS names none (a job joining a cluster
    uses that cluster's own settings)."""

    dashboard: bool = Field(False, description="Start Ray's dashboard (and its job API) with the local cluster.")
    dashboard_host: str = Field(
        "127.0.0.1", description="Interface the dashboard listens on: loopback unless you say otherwise (0.0.0.0 "
        "exposes it, and the job API that runs code, to the network)."
    )
    dashboard_port: int = Field(8265, gt=0, lt=65536)


class Config(Section):
    output_dir: str = Field(description="Run directory: every stage's output, the model, the report.")
    seed: int = 0
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
