"""Nothing waits in silence: while a stage makes no progress, say what Ray cannot schedule and why.

Ray keeps work whose resources no node has free pending without a word (`ray status` shows it as
"Pending Demands"). A stage that finishes nothing for `quiet_s` seconds asks the GCS what is pending,
what each node has free and which placement groups hold resources, and logs it with what would free it.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

log = logging.getLogger(__name__)

QUIET_S = float(os.environ.get("S3FT_WATCHDOG_S", "30"))  # well within a minute, above a slow shard's time
REMEDY = ("It runs once a node with those resources joins or their holders give them back; or ask for less: "
          "generation.num_engines, generation.cpus_per_engine, generation.tensor_parallel_size, "
          "judge.num_workers, train.num_workers")


@contextmanager
def watchdog(stage: str | Callable[[], str], quiet_s: float = QUIET_S) -> Iterator[Callable[[], None]]:
    """Yields `progress()`, to call whenever the stage finishes a piece of work. Every `quiet_s` without
    progress, a thread logs what the cluster cannot schedule (and nothing when all is merely running).
    `stage`: its name, or a function that says which of its steps the work waits in now."""
    name = stage if callable(stage) else lambda: stage
    last = [time.monotonic()]
    stop = threading.Event()

    def watch() -> None:
        while not stop.wait(min(5.0, quiet_s)):
            quiet = time.monotonic() - last[0]
            if quiet < quiet_s:
                continue
            try:
                why = unschedulable()
            except Exception as exc:  # noqa: BLE001 - a watchdog that cannot look must not end the run
                log.debug("watchdog could not read Ray's state: %s", exc)
                continue
            if why:
                log.warning("%s: nothing finished for %.0f s: %s", name(), quiet, why)
                last[0] = time.monotonic()  # say it again after another quiet period, not every 5 s

    thread = threading.Thread(target=watch, name=f"watchdog {name()}", daemon=True)
    thread.start()
    try:
        yield lambda: last.__setitem__(0, time.monotonic())
    finally:
        stop.set()
        thread.join()


def unschedulable() -> str | None:
    """What Ray has pending for lack of resources, per node what is free and who holds the rest; None
    when nothing is pending (or Ray is not up)."""
    import ray
    from ray.autoscaler.v2.sdk import get_cluster_status

    if not ray.is_initialized():
        return None
    status = get_cluster_status(ray.get_runtime_context().gcs_address)
    demands = status.resource_demands
    waiting = [f"{r.count} task(s)/actor(s) needing {_fmt(r.bundle)}"  # not those waiting on a group below
               for d in demands.ray_task_actor_demand for r in d.bundles_by_count if _fmt(r.bundle) != "{}"]
    waiting += [f"a placement group of {[_fmt(r.bundle) for r in d.bundles_by_count]} ({d.strategy})"
                for d in demands.placement_group_demand]
    if not waiting:
        return None
    nodes = status.active_nodes + status.idle_nodes
    ips = {n.node_id: n.ip_address for n in nodes}
    free = "; ".join(f"{n.ip_address} {_fmt(n.available_resources())} of {_fmt(n.total_resources())}" for n in nodes)
    held = [f"'{g['name'] or g['placement_group_id'][:8]}' {[_fmt(b) for b in g['bundles'].values()]} on "
            f"{sorted({ips.get(node, node[:8]) for node in g['bundles_to_node_id'].values()})}"
            for g in ray.util.placement_group_table().values() if g["state"] == "CREATED"]
    return (f"Ray cannot place {', '.join(waiting)}. Free per node: {free or 'no node'}. Held by placement "
            f"groups: {', '.join(held) or 'none'}. {REMEDY}.")


def _fmt(resources: dict[str, Any]) -> str:
    """CPU, GPU and custom resources; not memory, object store or the per-node markers."""
    shown = {k: v for k, v in resources.items()
             if k not in ("memory", "object_store_memory") and not k.startswith("node:") and "_group_" not in k}
    return "{" + ", ".join(f"{k}: {v:g}" for k, v in sorted(shown.items())) + "}"
