"""The sections of an experiment config that each stage reads: model, data, generation, paraphrase,
selection, evaluation, and the cluster the run is meant for. Pure schemas: nothing here imports a stage."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from s3ft.config.section import Section

__all__ = ["ClusterConfig", "DataConfig", "EvalConfig", "GenerationConfig", "ModelConfig", "ParaphraseConfig",
           "RayConfig", "SelectionConfig", "TaskName"]

TaskName = Literal["gsm8k", "humaneval", "mbpp", "nq_open", "generic"]


class ModelConfig(Section):
    path: str = Field(description="Local model folder (Hugging Face format) or a hub id.")
    build_if_missing: Literal["none", "tiny"] = Field(
        "none", description="If nothing is at `path`, write a model there: tiny (a random Llama, for smoke tests)."
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
    validation_rows: int = Field(
        0, ge=0, description="Rows carved from the training set for validation (the same rows for every run of this "
        "data: chosen by a hash of their ids), never trained on; eval scores each model on them too."
    )
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
    max_num_seqs: int | None = Field(
        None, gt=0, description="vLLM: sequences an engine runs at once (its scheduler's limit); none: vLLM's "
        "default for the device (256 on CPU and most GPUs). Also sets the rows in flight per engine (twice "
        "this, or fewer where the KV cache binds).",
    )
    shards_in_flight: int | None = Field(
        None, gt=0, description="Shards per engine at once; none: as many as the engine can run (vLLM's "
        "max_num_seqs and KV cache, reported when it starts), 2 for hf.",
    )
    stream: bool = Field(
        True, description="s3ft data: judge, paraphrase and judge again each shard as soon as it is generated "
        "(false: one stage after another over the whole dataset).",
    )
    cpus_per_engine: int = Field(1, gt=0)


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
    name: str | None = Field(
        None, description="What the report calls the in-domain test set; default: the data file's name "
        "(gsm8k/test.jsonl → 'gsm8k test')."
    )
    base_cache: bool = Field(
        True, description="Reuse the base model's scores across runs that share the base model (its files) and these "
        "eval settings, instead of evaluating it once per run."
    )
    base_cache_dir: str | None = Field(
        None, description="Where those scores are kept; default: .s3ft-cache/base-eval beside the run directory."
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
