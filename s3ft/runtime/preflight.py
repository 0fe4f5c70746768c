"""Checks that refuse a run before any work starts, rather than an hour into it."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

from s3ft.errors import ConfigError

PROBE_BYTES = 1 << 20


def check_output_dir(run_dir: Path) -> None:
    """The run directory can be created and written, with at least a little room left."""
    probe = run_dir / f".write-test-{time.time_ns()}"
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"\0" * PROBE_BYTES)
    except OSError as exc:
        raise ConfigError(f"output_dir {run_dir} is not writable: {exc.strerror or exc}") from None
    finally:
        with contextlib.suppress(OSError):
            probe.unlink()
