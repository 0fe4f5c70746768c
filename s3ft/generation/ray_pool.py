"""A pool of generation engines on Ray: data-parallel actors, each owning one backend.

Our own pool rather than Ray Data because the pipeline resumes shard by shard: the caller streams
(key, prompts) shards in and gets (key, completions) back as each finishes, and a shard whose actor
died is redone on a fresh actor — every key comes back exactly once.

Each engine lives in its own placement group, so its resources are reserved as one unit and handed
back as one unit: on GPU `tensor_parallel_size` bundles of one GPU on one node (vLLM's Ray executor
places its TP workers in them); on CPU one bundle of `cpus_per_engine` CPUs (without a placement
group, vLLM on Ray waits for a GPU that never comes). The engine actor claims none of its bundles'
CPUs itself: while the engines wait between stages, the judges run in those CPUs (`cpu_slots`).
"""

from __future__ import annotations

import logging
import os
import uuid
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import ray
from ray.exceptions import RayActorError, RayTaskError
from ray.util.placement_group import PlacementGroup, placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from s3ft.config import GenerationConfig, ModelConfig
from s3ft.errors import ConfigError, S3FTError
from s3ft.generation.base import Sampling
from s3ft.runtime.cluster import require_ray
from s3ft.runtime.lending import CpuSlot

K = TypeVar("K")
log = logging.getLogger(__name__)

MAX_SHARD_ATTEMPTS = 3  # a shard whose engine died this often is a crash, not bad luck
PLACEMENT_TIMEOUT_S = 600.0  # long enough for an autoscaler to add a node


@ray.remote
class _EngineActor:
    """One backend in one Ray worker; threaded so several shards can be in the engine at once."""

    def __init__(self, backend: str, options: dict[str, Any], env: dict[str, str | None]) -> None:
        for name, value in env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        from s3ft.generation import BACKENDS  # importing the package fills the registry

        # Kept, not raised: an error in __init__ reaches the driver only as Ray's ActorDiedError text,
        # while one raised by `ready` keeps its type (ModelError) for the CLI to print plainly.
        self._backend: Any = None
        self._error: Exception | None = None
        try:
            self._backend = BACKENDS[backend](**options)
        except Exception as exc:  # noqa: BLE001
            self._error = exc

    def ready(self) -> None:
        if self._error is not None:
            raise self._error

    def generate(self, prompts: list[str], sampling: Sampling) -> list[list[str]]:
        self.ready()
        return self._backend.generate(prompts, sampling)

    def where(self) -> dict[str, Any]:
        from s3ft.runtime.placement import here

        return here()

    def close(self) -> None:
        close = getattr(self._backend, "close", None)
        if close is not None:
            close()


def engine_bundles(gen: GenerationConfig, on_gpu: bool) -> list[dict[str, float]]:
    """The placement group of one engine: a bundle per GPU of its tensor-parallel group, placed
    STRICT_PACK so that the whole group lands on one node (TP all-reduces stay off the network)."""
    if on_gpu:
        return [{"GPU": 1, "CPU": 1}] * gen.tensor_parallel_size
    return [{"CPU": gen.cpus_per_engine}]


@dataclass(eq=False)
class _Engine:
    actor: Any  # ActorHandle
    group: PlacementGroup
    where: dict[str, Any] | None = None  # its node (runtime.placement.here), once it is ready


@dataclass
class _Shard:
    key: Any
    prompts: list[str]
    attempts: int = 0


class GenerationPool:
    """`with GenerationPool(model, gen) as pool: for key, completions in pool.generate_shards(...)`."""

    def __init__(
        self,
        model: ModelConfig,
        gen: GenerationConfig,
        *,
        backend_options: Mapping[str, Any] | None = None,
        shards_in_flight: int | None = None,
    ) -> None:
        """`backend_options` go to the backend on top of what the config sets (e.g. vLLM's
        `enforce_eager=True`: no graph compilation, so a faster start for short jobs and tests).
        `shards_in_flight` per engine bounds what is read ahead of the results; vLLM runs that many
        shards as one continuous batch, so more keeps a big engine busier."""
        require_ray()
        self.model, self.gen = model, gen
        self._extra_options = dict(backend_options or {})
        self.shards_in_flight = shards_in_flight or gen.shards_in_flight
        self.on_gpu = gen.device == "cuda" or (gen.device == "auto" and ray.cluster_resources().get("GPU", 0) > 0)
        self.restarts = 0
        self._launched = 0
        self._pool_tag = uuid.uuid4().hex[:6]  # placement-group names are cluster-wide: pools must not collide
        self.placement: list[dict[str, Any]] = []  # where each engine ran, replacements appended
        self._engines: list[_Engine] = []
        self._starting: dict[ray.ObjectRef, _Engine] = {}  # replacements, by their `ready` call
        try:
            self._engines = [self._launch() for _ in range(gen.num_engines)]
            self._wait_ready()
        except BaseException:
            self.shutdown()
            raise

    def __enter__(self) -> GenerationPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    def cpu_slots(self) -> list[CpuSlot]:
        """The engines' CPUs, for CPU tasks to run in while the engines are idle (one slot per bundle)."""
        return [CpuSlot(PlacementGroupSchedulingStrategy(placement_group=e.group, placement_group_bundle_index=i),
                        bundle["CPU"])
                for e in self._engines for i, bundle in enumerate(self._bundles()) if bundle.get("CPU")]

    @property
    def actors(self) -> list[Any]:
        """The live engine actors (for monitoring, and for tests that kill one)."""
        return [e.actor for e in self._engines]

    def _bundles(self) -> list[dict[str, float]]:
        return engine_bundles(self.gen, self.on_gpu)

    def _backend_options(self) -> dict[str, Any]:
        options: dict[str, Any] = {
            "model_path": self.model.path,
            "dtype": self.model.dtype,
            "trust_remote_code": self.model.trust_remote_code,
        }
        if self.gen.backend == "hf":
            options |= {"batch_size": self.gen.batch_size, "device": "cuda" if self.on_gpu else "cpu"}
        else:
            options |= {
                "tensor_parallel_size": self.gen.tensor_parallel_size,
                "max_model_len": self.model.max_model_len,
                "gpu_memory_utilization": self.gen.gpu_memory_utilization,
                "seed": self.gen.seed,
                "cpu_kvcache_gib": self.gen.cpu_kvcache_gib,
                "enforce_eager": self.gen.enforce_eager,
            }
            if self.gen.tensor_parallel_size > 1:
                options["distributed_executor_backend"] = "ray"  # TP workers go into this engine's bundles
        return options | self._extra_options

    def _env(self) -> dict[str, str | None]:
        # vLLM's INFO lines from every engine drown the progress bars; VLLM_LOGGING_LEVEL=INFO brings them back.
        quiet = {"VLLM_LOGGING_LEVEL": os.environ.get("VLLM_LOGGING_LEVEL", "WARNING")}
        if self.on_gpu:
            # With TP > 1 the actor holds no GPU itself; Ray would hide every GPU from it and vLLM
            # would then not see the platform it is to drive.
            return quiet | ({"CUDA_VISIBLE_DEVICES": None} if self.gen.tensor_parallel_size > 1 else {})
        # vLLM's automatic CPU binding pins every engine on a node to the same cores; let each use
        # the threads its bundle pays for instead.
        threads = str(self.gen.cpus_per_engine)
        return quiet | {"VLLM_CPU_OMP_THREADS_BIND": "nobind", "OMP_NUM_THREADS": threads}

    def _launch(self) -> _Engine:
        self._launched += 1
        group = placement_group(self._bundles(), strategy="STRICT_PACK", name=f"s3ft engine {self._launched} (pool {self._pool_tag})")
        holds_gpu = self.on_gpu and self.gen.tensor_parallel_size == 1
        actor = _EngineActor.options(
            num_cpus=0,  # the bundle reserves them; judges borrow them between generation stages
            num_gpus=1 if holds_gpu else 0,
            max_concurrency=self.shards_in_flight,
            scheduling_strategy=PlacementGroupSchedulingStrategy(
                placement_group=group, placement_group_bundle_index=0, placement_group_capture_child_tasks=True
            ),
        ).remote(self.gen.backend, self._backend_options(), self._env())
        return _Engine(actor, group)

    def _wait_ready(self) -> None:
        groups = [e.group.ready() for e in self._engines]
        _, waiting = ray.wait(groups, num_returns=len(groups), timeout=PLACEMENT_TIMEOUT_S)
        if waiting:
            raise ConfigError(
                f"generation asks for {len(self._engines)} engine(s) of {self._bundles()} but the Ray "
                f"cluster could not place {len(waiting)} of them in {PLACEMENT_TIMEOUT_S:.0f} s; "
                f"free now: {ray.available_resources()}. Lower generation.num_engines or "
                "generation.cpus_per_engine / tensor_parallel_size."
            )
        try:
            ray.get([e.actor.ready.remote() for e in self._engines])
        except RayTaskError as exc:
            raise (exc.cause if isinstance(exc.cause, S3FTError) else exc) from None
        for engine in self._engines:
            engine.where = ray.get(engine.actor.where.remote())
            self.placement.append(engine.where)

    def _retire(self, engine: _Engine) -> None:
        ray.kill(engine.actor, no_restart=True)
        remove_placement_group(engine.group)

    def _replace(self, dead: _Engine) -> None:
        """Retire a dead engine and start a fresh one. The fresh one takes work only once it is placed and
        ready (`_admit`): until then, and for ever if its node is gone and no other has room, the other
        engines do the work."""
        self._retire(dead)
        self._engines.remove(dead)
        fresh = self._launch()
        self._starting[fresh.actor.ready.remote()] = fresh
        self.restarts += 1

    def _admit(self, ref: ray.ObjectRef) -> None:
        engine = self._starting.pop(ref)
        try:
            ray.get(ref)
            engine.where = ray.get(engine.actor.where.remote())
        except (RayActorError, RayTaskError) as exc:
            log.warning("generation: a replacement engine failed to start (%s)", type(exc).__name__)
            self._retire(engine)
            return
        self._engines.append(engine)
        self.placement.append(engine.where)
        log.info("generation: a replacement engine is ready on %s", _node(engine.where))

    def generate_shards(
        self, items: Iterable[tuple[K, list[str]]], sampling: Sampling
    ) -> Iterator[tuple[K, list[list[str]]]]:
        """Yield `(key, completions)` per shard as it finishes (any order); `items` is read lazily,
        at most `shards_in_flight` shards per engine ahead of the results. A shard whose engine died
        (or whose node was lost) is redone on another engine, and the log says which node and shard."""
        source = iter(items)
        retry: deque[_Shard] = deque()
        running: dict[ray.ObjectRef, tuple[_Shard, _Engine]] = {}

        def next_shard() -> _Shard | None:
            if retry:
                return retry.popleft()
            item = next(source, None)
            return None if item is None else _Shard(item[0], list(item[1]))

        def submit() -> None:
            for engine in self._engines:
                while sum(e is engine for _, e in running.values()) < self.shards_in_flight:
                    shard = next_shard()
                    if shard is None:
                        return
                    shard.attempts += 1
                    running[engine.actor.generate.remote(shard.prompts, sampling)] = (shard, engine)

        while True:
            submit()
            if not running:
                if not self._engines and not self._starting:
                    raise S3FTError("generation: every engine died and none could be started again")
                if not self._engines:  # work is left (or may be): wait for a replacement
                    self._admit(ray.wait(list(self._starting), num_returns=1)[0][0])
                    continue
                break
            (ref,), _ = ray.wait([*running, *self._starting], num_returns=1)
            if ref in self._starting:
                self._admit(ref)
                continue
            shard, engine = running.pop(ref)
            try:
                completions = ray.get(ref)
            except RayActorError as exc:
                if shard.attempts >= MAX_SHARD_ATTEMPTS:
                    raise
                log.warning("generation: shard %s is redone: its engine on %s died (%s)", shard.key,
                            _node(engine.where), _why(exc, engine))
                if engine in self._engines:  # its first lost shard: replace it once
                    self._replace(engine)
                retry.append(shard)
            except RayTaskError as exc:
                raise (exc.cause if isinstance(exc.cause, S3FTError) else exc) from None
            else:
                yield shard.key, completions

    def shutdown(self) -> None:
        """Stop the engines (their own subprocesses too) and hand their resources back to the cluster."""
        for starting in list(self._starting.values()):
            self._retire(starting)
        self._starting = {}
        engines, self._engines = self._engines, []
        if engines:
            ray.wait([e.actor.close.remote() for e in engines], num_returns=len(engines), timeout=30)
        for engine in engines:
            self._retire(engine)


def _node(where: dict[str, Any] | None) -> str:
    return "an unknown node" if where is None else f"node {where['address']} ({where['hostname']})"


def _why(exc: Exception, engine: _Engine) -> str:
    """Whether the engine's node is gone (a lost machine) or only the engine died."""
    node_id = (engine.where or {}).get("node_id")
    alive = {n["NodeID"]: n["Alive"] for n in ray.nodes()}
    if node_id and not alive.get(node_id, False):
        return "its node is lost"
    return type(exc).__name__
