"""Checks that refuse a run before any work starts, rather than an hour into it."""

from __future__ import annotations

import contextlib
import secrets
import time
from pathlib import Path

from s3ft.errors import ConfigError

PROBE_BYTES = 1 << 20


def check_output_dir(run_dir: Path) -> None:
    """The run directory can be created and written, with at least a little room left; with Ray up
    on several nodes, it is the same directory on all of them."""
    probe = run_dir / f".write-test-{time.time_ns()}"
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"\0" * PROBE_BYTES)
    except OSError as exc:
        raise ConfigError(f"output_dir {run_dir} is not writable: {exc.strerror or exc}") from None
    finally:
        with contextlib.suppress(OSError):
            probe.unlink()
    if _ray_is_up():
        check_shared_output_dir(run_dir)


def _ray_is_up() -> bool:
    import sys

    return "ray" in sys.modules and sys.modules["ray"].is_initialized()  # never imports Ray itself


def check_shared_output_dir(run_dir: Path, timeout_s: float = 120.0) -> None:
    """On a Ray cluster of several nodes, every node sees the same `run_dir`: ranks on other nodes write
    checkpoints and read tokenized data there. The driver writes a probe file; a task on every alive node
    reads it back and answers with a file of its own; nodes that cannot are named."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = [n for n in ray.nodes() if n["Alive"]]
    if len(nodes) < 2:
        return
    token = secrets.token_hex(16)
    probe = run_dir / f".shared-test-{token}"
    probe.write_text(token)
    look = ray.remote(num_cpus=0)(_look)  # no CPU: it runs even where placement groups hold every CPU
    refs = {look.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote(
        str(probe), token): n for n in nodes}
    try:
        done, late = ray.wait(list(refs), num_returns=len(refs), timeout=timeout_s)
        problems = [f"{_node_name(refs[r])}: no answer in {timeout_s:.0f} s" for r in late]
        for ref in done:
            node = refs[ref]
            try:
                answer = ray.get(ref)
            except Exception as exc:  # noqa: BLE001 - a node that cannot run the check is named, whatever broke
                answer = f"the check failed there ({type(exc).__name__})"
            if answer is None and not probe.with_name(f"{probe.name}.{node['NodeID']}").is_file():
                answer = "the file it wrote there is not seen by the driver"
            if answer is not None:
                problems.append(f"{_node_name(node)}: {answer}")
    finally:
        for path in [probe, *run_dir.glob(f".shared-test-{token}.*")]:
            with contextlib.suppress(OSError):
                path.unlink()
    if problems:
        raise ConfigError(
            f"output_dir {run_dir} is not the same directory on every node of the Ray cluster; "
            + "; ".join(problems)
            + ". Put output_dir on storage that every node mounts at the same path (NFS, Lustre, ...)."
        )


def _look(probe: str, token: str) -> str | None:
    """On one node: None when it reads the driver's probe and can write beside it, else what went wrong."""
    import ray

    path = Path(probe)
    try:
        seen = path.read_text()
    except OSError as exc:
        return f"does not see the file the driver wrote there ({exc.strerror or exc})"
    if seen != token:
        return "sees another file at that path"
    try:
        path.with_name(f"{path.name}.{ray.get_runtime_context().get_node_id()}").write_text(token)
    except OSError as exc:
        return f"cannot write there ({exc.strerror or exc})"
    return None


def _node_name(node: dict) -> str:
    return f"node {node['NodeManagerHostname']} ({node['NodeManagerAddress']})"
