"""Supervised fine-tuning on the selected targets: DeepSpeed ZeRO-3, full-parameter or LoRA.

`train(run_dir, model_path, cfg)` reads run_dir/data/merged.jsonl and returns run_dir/model. Importing
this package is light: torch and DeepSpeed load when training starts.
"""

from s3ft.config.train import LoraConfig, TrainConfig
from s3ft.train.driver import train

__all__ = ["LoraConfig", "TrainConfig", "train"]
