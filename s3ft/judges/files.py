"""Judge a JSONL file of responses (`s3ft judge`): rows stream through in chunks, verdicts are counted."""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tqdm import tqdm

from s3ft.config import JudgeConfig
from s3ft.data.sources import iter_records
from s3ft.errors import DataError
from s3ft.judges.run import judge_from_config, verdict_dict
from s3ft.runtime.shards import write_jsonl
from s3ft.selection import count_verdict, judge_stats

CHUNK_ROWS = 256  # rows per judge_batch call: the code judge's pool and the LLM judge's engine fill up on it


def judge_file(cfg: JudgeConfig, source: Path, output: Path) -> dict[str, Any]:
    """Write each row of `source` with `correct` and `reason` to `output`; returns the counts
    (`rows`, `correct`, and `judge_stats`' errors, unparseable verdicts and audit)."""
    if not source.is_file():
        raise DataError("no such file", file=str(source))
    judge = judge_from_config(cfg)
    counts: Counter[str] = Counter()

    def judged() -> Iterator[dict[str, Any]]:
        records = iter_records(str(source))
        with tqdm(desc=f"judge {cfg.kind}", unit="row") as bar:
            while chunk := list(itertools.islice(records, CHUNK_ROWS)):
                for record in chunk:
                    if record.row is None:
                        raise DataError(record.error or "unreadable row", file=record.file, line=record.line)
                for record, verdict in zip(chunk, judge.judge_batch([r.row for r in chunk]), strict=True):
                    out = verdict_dict(verdict)
                    counts["correct"] += verdict.correct
                    count_verdict(out, counts)
                    yield {**record.row, **out}
                bar.update(len(chunk))

    try:
        total = write_jsonl(output, judged())
    finally:
        judge.close()
    return {"rows": total, "correct": counts["correct"], **judge_stats(counts)}
