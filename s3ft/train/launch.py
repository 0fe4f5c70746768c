"""Launchers: the same `run_worker` on every rank, started by Ray Train, torchrun, or this process.

- ray: a Ray Train `TorchTrainer` (gloo on CPU, nccl on GPU) inside the current Ray cluster — the
  default, because `s3ft run` is one Ray job.
- torchrun: a `torchrun --standalone` subprocess on this node; for several nodes (SLURM without Ray)
  start `torchrun ... -m s3ft.train` or `deepspeed --module s3ft.train` yourself — each rank then
  sees RANK/WORLD_SIZE/MASTER_ADDR and `train()` runs the worker directly.
- local: one rank in this process (debuggers, notebooks).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from s3ft.config.train import TrainConfig
from s3ft.errors import TrainingError
from s3ft.runtime.ports import free_port
from s3ft.train import checkpoint
from s3ft.train.loop import run_worker
from s3ft.train.spec import WorkerSpec

RANK_ENV = ("RANK", "WORLD_SIZE", "MASTER_ADDR")
# How long a failed run asks Ray whether a rank's node is dead before it reports: only when a rank became
# unreachable, and bounded, since Ray's health checks take ~30 s by default to declare a node dead.
LOST_NODE_WAIT_S = 10.0


def in_launched_rank() -> bool:
    """True in a process that torchrun / the deepspeed launcher started as one rank of a job."""
    return all(k in os.environ for k in RANK_ENV)


def launch_local(spec: WorkerSpec, cfg: TrainConfig) -> None:
    env = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1",
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        run_worker(spec)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def launch_torchrun(spec: WorkerSpec, cfg: TrainConfig) -> None:
    spec_file = Path(spec.run_dir) / "train" / "worker_spec.json"
    spec_file.write_text(json.dumps(spec.to_dict(), indent=2))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={cfg.num_workers}",
           "-m", "s3ft.train", "--worker-spec", str(spec_file)]
    env = {k: v for k, v in os.environ.items() if k not in RANK_ENV}
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // cfg.num_workers)))
    code = subprocess.run(cmd, check=False, env=env).returncode
    if code != 0:
        raise training_failed(spec, f"torchrun exited with code {code} (the failing rank's error is above)")


def launch_ray(spec: WorkerSpec, cfg: TrainConfig) -> None:
    from ray.exceptions import RayError
    from ray.train import RunConfig, ScalingConfig, TrainingFailedError, WorkerGroupError
    from ray.train.torch import TorchConfig, TorchTrainer

    from s3ft.runtime.cluster import require_ray
    from s3ft.runtime.watchdog import watchdog

    require_ray()
    trainer = _trainer_class(TorchTrainer)(
        _ray_worker,
        train_loop_config={"spec": spec.to_dict()},
        scaling_config=ScalingConfig(num_workers=cfg.num_workers, use_gpu=spec.use_gpu,
                                     placement_strategy=cfg.placement_strategy),
        torch_config=TorchConfig(backend="nccl" if spec.use_gpu else "gloo", timeout_s=cfg.collective_timeout_s),
        run_config=RunConfig(name="train", storage_path=str(Path(spec.run_dir) / "ray")),
    )
    try:
        with watchdog("train"), _sigint_kept():  # ranks Ray cannot place (a node gone, a cluster too small) are named
            trainer.fit()
    except WorkerGroupError as exc:
        ranks = ", ".join(f"rank {r}: {_cause(e)}" for r, e in sorted(exc.worker_failures.items()))
        unreachable = any(_unreachable(e) for e in exc.worker_failures.values())
        lost = _lost_nodes(spec, wait_s=LOST_NODE_WAIT_S if unreachable else 0)
        raise training_failed(spec, f"{lost}training worker(s) failed ({ranks or exc})") from exc
    except TrainingFailedError as exc:
        raise training_failed(spec, _lost_nodes(spec) + str(exc).splitlines()[0]) from exc
    except RayError as exc:  # the controller itself lost, with the node the driver attached to
        raise training_failed(spec, f"{_lost_nodes(spec)}Ray Train's controller was lost ({_cause(exc)})") from exc


@contextmanager
def _sigint_kept() -> Iterator[None]:
    """Ctrl-C's handler as it was before `fit`. Ray Train's `fit` installs its own, which holds the training
    controller's actor handle: left in place, it kept that actor (a `ray::TrainController` process) alive
    until the command ended, one more for every run of a sweep, and a Ctrl-C after training (during the
    evaluation, say) went to that finished controller instead of stopping the command."""
    before = signal.getsignal(signal.SIGINT)
    try:
        yield
    finally:
        # `fit` installs its handler only on the main thread; None: the one before was not set from Python
        if before is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, before)


def _lost_nodes(spec: WorkerSpec, wait_s: float = 0) -> str:
    """'the node of rank 1, 10.0.0.7 (gpu-7), is lost; ' for ranks (logs/placement/train.json) on nodes Ray
    counts dead, asking for up to `wait_s` (Ray marks a node dead once its health checks fail). The other
    ranks fail too, on a collective whose peer is gone, with an error that does not say why."""
    import ray
    from ray.exceptions import RayError

    deadline = time.monotonic() + wait_s
    while True:
        try:
            placed = json.loads((Path(spec.run_dir) / "logs" / "placement" / "train.json").read_text())
            dead = {n["NodeID"] for n in ray.nodes() if not n["Alive"]}
        except (OSError, ValueError, RayError):
            return ""
        lost = [f"the node of rank {r['rank']}, {r['address']} ({r['hostname']}), is lost; "
                for r in sorted(placed, key=lambda r: r["rank"]) if r.get("node_id") in dead]
        if lost or time.monotonic() >= deadline:
            return "".join(lost)
        time.sleep(1)


def _unreachable(exc: BaseException) -> bool:
    """A rank that Ray could no longer reach (its process or its node gone), not one that raised."""
    from ray.exceptions import RayActorError

    return isinstance(exc, RayActorError) or type(exc).__name__ == "WorkerHealthCheckFailedError"


def _cause(exc: BaseException) -> str:
    """The error's type and first line: 'ActorDiedError: The actor died because its node has died ...'."""
    first = next((line for line in str(exc).splitlines() if line.strip()), "")
    return f"{type(exc).__name__}: {first[:200]}" if first else type(exc).__name__


def _trainer_class(base: type) -> type:
    """TorchTrainer, without Ray Train's placement-group cleaner where the cluster cannot serve it.

    The cleaner is a detached actor that asks Ray's State API, once a second, whether the training
    controller still lives, and removes the workers' placement group when it does not. The State API is
    served by the dashboard; on a cluster started without one (s3ft's local cluster by default) every
    question fails, the cleaner logs "Failed to query Ray Train Controller actor state" and asks again:
    once per second of training, and for ever if the controller dies, since it can never see it die.
    There it is left out: the controller removes its placement group when training ends or fails, and
    a local cluster takes everything with it when the command ends."""
    from ray.train.v2._internal.callbacks.placement_group_callback import PlacementGroupCleanerCallback

    from s3ft.runtime.cluster import state_api_available

    if state_api_available():
        return base

    class Trainer(base):  # type: ignore[misc, valid-type]
        def _create_default_callbacks(self) -> list:
            callbacks = super()._create_default_callbacks()
            return [cb for cb in callbacks if not isinstance(cb, PlacementGroupCleanerCallback)]

    return Trainer


def training_failed(spec: WorkerSpec, what: str) -> TrainingError:
    """The error for ranks that died: what failed, and where a re-run of the same command resumes."""
    found = checkpoint.latest(Path(spec.run_dir) / "checkpoints")
    resume = (f"run the same command again to resume from the checkpoint of step {found[0]} ({found[1]}): no row "
              "is trained twice or skipped" if found else
              "no checkpoint was written yet, so running the same command again trains from the start")
    return TrainingError(f"training failed: {what}; {resume}")


def _ray_worker(config: dict) -> None:
    run_worker(WorkerSpec(**config["spec"]))


LAUNCHERS: dict[str, Callable[[WorkerSpec, TrainConfig], None]] = {
    "ray": launch_ray,
    "torchrun": launch_torchrun,
    "local": launch_local,
}


def launch(spec: WorkerSpec, cfg: TrainConfig) -> None:
    LAUNCHERS[cfg.launcher](spec, cfg)
