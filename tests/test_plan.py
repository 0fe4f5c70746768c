"""Every shipped config validates, and `s3ft plan` tells what fits where."""

from __future__ import annotations

from pathlib import Path

import pytest

from s3ft.cli import main
from s3ft.config import load_config
from s3ft.errors import ConfigError
from s3ft.plan import plan

REPO = Path(__file__).resolve().parents[1]
EXPERIMENTS = sorted((REPO / "configs" / "experiments").glob("*.yaml"))
LLAMA70B = str(REPO / "configs" / "models" / "llama-3.1-70b.json")


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.name)
def test_every_experiment_config_validates(path: Path) -> None:
    config = load_config(path)
    assert config.output_dir and config.model.path


@pytest.mark.parametrize("name", ["zero3", "zero3_offload", "zero2"])
def test_every_deepspeed_config_fills_from_ours(name: str) -> None:
    from s3ft.config.train import TrainConfig
    from s3ft.train.dsconfig import resolve_deepspeed_config

    filled = resolve_deepspeed_config(TrainConfig(deepspeed=name), world_size=8, bf16=True, hidden_size=4096)
    assert "auto" not in str(filled)


def test_70b_plan_fits_with_offload_only() -> None:
    result = plan(load_config(REPO / "configs" / "experiments" / "llama70b_gsm8k.yaml"), LLAMA70B)
    assert 70e9 < result.model.params < 71e9
    modes = result.train["modes"]
    assert not modes["zero3"]["fits"] and modes["zero3_offload"]["fits"]
    assert result.train["deepspeed"] == "zero3_offload" and result.fits
    assert result.generation["gpus"] == 16 and result.generation["weights_gib_per_gpu"] < 40


def test_plan_warns_when_the_cluster_is_too_small(capsys: pytest.CaptureFixture[str]) -> None:
    config = REPO / "configs" / "experiments" / "llama70b_gsm8k.yaml"
    small = ["train.deepspeed=zero3", "generation.tensor_parallel_size=1", "generation.num_engines=4"]
    result = plan(load_config(config, small), LLAMA70B)
    assert not result.fits
    assert any("zero3_offload" in w for w in result.warnings)  # names the mode that would fit
    assert any("tensor_parallel_size" in w for w in result.warnings)  # 141 GiB of weights on one GPU
    assert main(["plan", str(config), "--model-config", LLAMA70B, *sum((["--set", s] for s in small), [])]) == 0
    assert "does not fit" in capsys.readouterr().out


def test_impossible_layouts_are_refused_at_load() -> None:
    config = REPO / "configs" / "experiments" / "llama70b_gsm8k.yaml"
    with pytest.raises(ConfigError, match="gpus_per_node"):
        load_config(config, ["generation.tensor_parallel_size=16"])
    with pytest.raises(ConfigError, match="the cluster has 16"):
        load_config(config, ["generation.num_engines=5"])
    with pytest.raises(ConfigError, match="train.num_workers 17"):
        load_config(config, ["train.num_workers=17"])
