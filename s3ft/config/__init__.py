"""Experiment configs: one YAML per experiment, validated before any work starts.

The schemas of every section (stages, judge, train) and the loading, overriding and hashing of a
whole config. Nothing here imports a stage: `s3ft plan`, `--help` and validation stay light.
"""

from s3ft.config import stages
from s3ft.config.experiment import (
    Config,
    apply_overrides,
    build_config,
    build_section,
    load_config,
    parse_override,
    save_config,
    stage_key,
)
from s3ft.config.judges import JUDGE_OPTIONS, EndpointConfig, JudgeConfig, LLMJudgeConfig
from s3ft.config.stages import *  # noqa: F403  (every stage section)
from s3ft.config.train import LoraConfig, TrainConfig

__all__ = [
    "JUDGE_OPTIONS", "Config", "EndpointConfig", "JudgeConfig", "LLMJudgeConfig", "LoraConfig", "TrainConfig", "apply_overrides",
    "build_config", "build_section", "load_config", "parse_override", "save_config", "stage_key",
]
__all__ += stages.__all__
