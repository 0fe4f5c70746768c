"""Where each engine and rank ran: node id, address, hostname, pid, in the run directory
(`logs/placement/ROLE.json`), so a multi-node run can be checked after the fact."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Any


def here() -> dict[str, Any]:
    """This process's node as Ray knows it (node id and address), else the host's name and address."""
    where: dict[str, Any] = {"hostname": socket.gethostname(), "pid": os.getpid()}
    try:
        import ray

        if ray.is_initialized():
            context = ray.get_runtime_context()
            return where | {"node_id": context.get_node_id(), "address": ray.util.get_node_ip_address()}
    except ImportError:
        pass
    return where | {"node_id": None, "address": socket.gethostbyname(socket.gethostname())}


def record(run_dir: str | Path, role: str, entries: list[dict[str, Any]]) -> Path:
    """Write `logs/placement/ROLE.json` (whole, atomically)."""
    path = Path(run_dir) / "logs" / "placement" / f"{role}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(entries, indent=2) + "\n")
    tmp.replace(path)
    return path
