"""Load: the data engine streams, so its driver's peak memory on 10,000 rows (GSM8K train, repeated)
is that of 1,000, and every row comes out. The measurement is benchmarks/bench_data_memory.py's (its
default sizes are 2,000 and 20,000)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.bench_data_memory import GSM8K, peak_rss_mib

pytestmark = pytest.mark.slow


@pytest.mark.skipif(not GSM8K.is_file(), reason="needs ../shared/datasets/gsm8k")
def test_the_data_engine_streams_10000_rows_in_flat_memory(tmp_path: Path, tiny_model_dir: Path) -> None:
    small, _ = peak_rss_mib(1000, tmp_path, tiny_model_dir)
    large, _ = peak_rss_mib(10000, tmp_path, tiny_model_dir)
    # Holding 10,000 rows with their responses would add ~50 MiB to a ~640 MiB driver; streamed, the
    # peaks on 2,000 and 6,000 rows were 643 and 644 MiB.
    assert large < 1.04 * small, f"driver peak RSS {large:.0f} MiB on 10,000 rows vs {small:.0f} MiB on 1,000"
    stats = json.loads((tmp_path / "run10000" / "data" / "stats.json").read_text())
    assert stats["input_rows"] == stats["examples"] == stats["total"] == 10000
    with (tmp_path / "run10000" / "data" / "merged.jsonl").open() as merged:
        assert sum(1 for _ in merged) == 10000
