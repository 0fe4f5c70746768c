"""Supervised fine-tuning on the selected targets: DeepSpeed ZeRO-3, full-parameter or LoRA.

`train(run_dir, model_path, cfg)` reads run_dir/data/merged.jsonl and returns run_dir/model.
"""

from s3ft.config.train import LoraConfig, TrainConfig


def train(*args, **kwargs):
    """See `s3ft.train.driver.train` (imported lazily: torch and DeepSpeed are heavy)."""
    from s3ft.train.driver import train as _train

    return _train(*args, **kwargs)


__all__ = ["LoraConfig", "TrainConfig", "train"]
