"""The demo's lm-evaluation-harness task (pass this folder as `eval.include_path`).

Like s3ft's packaged tasks, its YAML reads its JSONL through `load_json_beside_demo_tasks`, so the
path stays relative to this folder wherever the package lives.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

TASKS_DIR = Path(__file__).resolve().parent


def load_json_beside_demo_tasks(data_files: dict[str, str], **_metadata: Any) -> Any:
    import datasets

    files = {split: str(TASKS_DIR / name) for split, name in data_files.items()}
    return datasets.load_dataset("json", data_files=files)
