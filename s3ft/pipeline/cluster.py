"""Join the Ray cluster once: the one named by RAY_ADDRESS (`ray job submit` sets it), else a local one."""

from __future__ import annotations

import os


def ensure_ray() -> None:
    import ray

    if ray.is_initialized():
        return
    address = os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True, configure_logging=False)
    else:
        # A local cluster of our own: no dashboard, so nothing listens beyond this process tree.
        ray.init(include_dashboard=False, log_to_driver=True, configure_logging=False)
