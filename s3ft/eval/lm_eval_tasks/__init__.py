"""lm-evaluation-harness tasks shipped with s3ft (pass this folder as `include_path`).

A packaged task's YAML cannot name its data by an absolute path, so it adds
`custom_dataset: !function s3ft.eval.lm_eval_tasks.load_json_beside_tasks`, which reads the same
`dataset_kwargs.data_files` relative to this folder. A task of your own needs no such line: give
`data_files` as absolute paths.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

TASKS_DIR = Path(__file__).resolve().parent


def load_json_beside_tasks(data_files: dict[str, str], **_metadata: Any) -> Any:
    """The JSON dataset `data_files` names, with relative paths taken from this folder; no network."""
    import datasets

    files = {split: str(TASKS_DIR / name) for split, name in data_files.items()}
    return datasets.load_dataset("json", data_files=files)
