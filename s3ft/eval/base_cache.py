"""The base model's scores, kept once per (base model files, eval settings) and reused by every run
that shares them: five runs of one sweep evaluate the base model once, not five times.

An entry is a folder named by the key, holding `scores.json` and any per-row output files; it is
written aside and renamed, so a reader sees a whole entry or none.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from s3ft.config import Config

SCORES = "scores.json"


def cache_dir(cfg: Config) -> Path | None:
    """Where the base model's scores live for this config; None when the cache is off."""
    if not cfg.eval.base_cache:
        return None
    if cfg.eval.base_cache_dir:
        return Path(cfg.eval.base_cache_dir)
    return Path(cfg.output_dir).resolve().parent / ".s3ft-cache" / "base-eval"


def cached(root: Path | None, key: str, compute: Callable[[], dict[str, Any]], files: list[Path]) -> dict[str, Any]:
    """`compute()` once per key; `files` (written by `compute`) are stored with the scores and copied back on a hit."""
    if root is None:
        return compute()
    entry = root / key
    if (entry / SCORES).is_file():
        for path in files:
            path.parent.mkdir(parents=True, exist_ok=True)
            if (entry / path.name).is_file():
                shutil.copyfile(entry / path.name, path)
        return json.loads((entry / SCORES).read_text())
    scores = compute()
    tmp = root / f".{key}.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for path in files:
        if path.is_file():
            shutil.copyfile(path, tmp / path.name)
    (tmp / SCORES).write_text(json.dumps(scores, indent=2) + "\n")
    try:
        tmp.rename(entry)
    except OSError:  # another run stored the same entry first: theirs is as good
        shutil.rmtree(tmp, ignore_errors=True)
    return scores
