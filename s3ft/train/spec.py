"""What every rank is handed: the worker spec, and where the prepared rows are. Light (no torch), so the
driver, the launchers and `s3ft.train` import it without the training stack."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from s3ft.config.train import TrainConfig


@dataclass
class WorkerSpec:
    """Everything a rank needs, small and picklable (Ray ships it; torchrun reads it from JSON)."""

    run_dir: str
    model_path: str
    train: dict[str, Any]  # TrainConfig as JSON
    use_gpu: bool
    bf16: bool
    hidden_size: int

    @property
    def cfg(self) -> TrainConfig:
        return TrainConfig.model_validate(self.train)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def data_files(run_dir: Path) -> tuple[Path, Path]:
    return run_dir / "train" / "train_rows", run_dir / "train" / "eval_rows"
