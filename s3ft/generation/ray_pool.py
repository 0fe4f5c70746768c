"""A pool of generation engines on Ray: data-parallel actors, each owning one backend.

Our own pool rather than Ray Data because the pipeline resumes shard by shard: the caller streams
(key, prompts) shards in and gets (key, completions) back as each finishes, and a shard whose actor
died is redone on a fresh actor — every key comes back exactly once.

Each engine lives in its own placement group, so its resources are reserved as one unit and handed
back as one unit: on GPU `tensor_parallel_size` bundles of one GPU on one node (vLLM's Ray executor
places its TP workers in them); on CPU one bundle of `cpus_per_engine` CPUs (without a placement
group, vLLM on Ray waits for a GPU that never comes). The engine actor claims none of its bundles'
CPUs itself: the judges borrow them (`cpu_slots`, `s3ft.runtime.lending`).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import uuid
from collections import deque
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Self, TypeVar

import ray
from ray.exceptions import RayActorError, RayTaskError
from ray.util.placement_group import PlacementGroup, placement_group, remove_placement_group
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy, PlacementGroupSchedulingStrategy

from s3ft.config import GenerationConfig, ModelConfig
from s3ft.errors import ConfigError, S3FTError
from s3ft.generation.base import EngineLimits, Sampling
from s3ft.runtime.admission import Admission
from s3ft.runtime.cluster import require_ray
from s3ft.runtime.lending import CpuSlot

K = TypeVar("K")
log = logging.getLogger(__name__)

MAX_SHARD_ATTEMPTS = 3  # a shard whose engine died this often is a crash, not bad luck
PLACEMENT_TIMEOUT_S = 600.0  # long enough for an autoscaler to add a node
SHARDS_WITHOUT_LIMITS = 2  # shards per engine for backends without a continuous batch (hf)
# A vLLM engine holds the sequences it can run at once and as many again in its queue: sequences of
# one length end together, and the next batch must already be there rather than a driver round trip away.
BATCHES_HELD = 2
# A `drive` loop starts once no shard has come for this long: the shards a stream sends at once (its
# first fill) go into the engine together, rather than the first one running alone until it is done.
FILL_S = 0.002


class _InTurn:
    """`add`/`drive` over a backend without a continuous batch (hf): each `drive` runs one queued shard."""

    def __init__(self, backend: Any) -> None:
        self._backend = backend
        self._queued: dict[Any, tuple[list[str], Sampling]] = {}

    def add(self, ticket: Any, prompts: list[str], sampling: Sampling) -> None:
        self._queued[ticket] = (prompts, sampling)

    def drive(self) -> dict[Any, list[list[str]]]:
        if not self._queued:
            return {}
        ticket = next(iter(self._queued))
        return {ticket: self._backend.generate(*self._queued.pop(ticket))}


@ray.remote
class _EngineActor:
    """One backend in one Ray worker. A plain (not asyncio, not threaded) actor: Ray runs its tasks one at
    a time on the worker's main thread, so the engine steps there (`drive`) and no idle Ray loop beside it
    takes the GIL from it. The pool queues each shard (`add`) and keeps `drive` calls going while any is
    queued (`GenerationPool._drive`); shards added meanwhile join the running batch at a later `drive`."""

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
        self._driven: Any = None
        self._error: Exception | None = None
        try:
            self._backend = BACKENDS[backend](**options)
        except Exception as exc:  # noqa: BLE001
            self._error = exc
        else:
            self._driven = self._backend if hasattr(self._backend, "drive") else _InTurn(self._backend)

    def ready(self) -> EngineLimits | None:
        """The engine's limits once it runs (None for backends without a continuous batch)."""
        if self._error is not None:
            raise self._error
        limits = getattr(self._backend, "limits", None)
        return limits() if limits is not None else None

    def add(self, ticket: int, prompts: list[str], sampling: Sampling) -> None:
        self.ready()
        self._driven.add(ticket, prompts, sampling)

    def drive(self) -> dict[int, list[list[str]]]:
        self.ready()
        return self._driven.drive()

    def load(self, model_path: str) -> None:
        self.ready()
        self._backend.load(model_path)

    def where(self) -> dict[str, Any]:
        from s3ft.runtime.placement import here

        return here()

    def close(self) -> None:
        close = getattr(self._backend, "close", None)
        if close is not None:
            close()


def engines_on_gpu(gen: GenerationConfig) -> bool:
    return gen.device == "cuda" or (gen.device == "auto" and ray.cluster_resources().get("GPU", 0) > 0)


def engine_bundles(gen: GenerationConfig, on_gpu: bool) -> list[dict[str, float]]:
    """The placement group of one engine: a bundle per GPU of its tensor-parallel group, placed
    STRICT_PACK so that the whole group lands on one node (TP all-reduces stay off the network)."""
    if on_gpu:
        return [{"GPU": 1, "CPU": 1}] * gen.tensor_parallel_size
    return [{"CPU": gen.cpus_per_engine}]


@dataclass(eq=False)
class _Engine:
    actor: Any  # ActorHandle
    group: PlacementGroup | None  # None: the engine reserves nothing (`reserve=False`)
    limits: EngineLimits | None = None  # reported once started; None: no continuous batch (hf)
    sequences: int = 0  # sequences it holds now
    shards: int = 0  # shards it holds now
    where: dict[str, Any] | None = None  # its node (runtime.placement.here), once it is ready
    tickets: dict[int, asyncio.Future[list[list[str]]]] = field(default_factory=dict)  # shards added, not back
    driving: asyncio.Task[None] | None = None  # the loop of `drive` calls, while it holds tickets


class GenerationPool:
    """`with GenerationPool(model, gen) as pool: for key, completions in pool.generate_shards(...)`,
    or from a coroutine `await pool.generate(prompts, sampling)`.

    How much each engine holds at once: with `shards_in_flight` set, that many shards; else (vLLM)
    shards until the sequences it holds reach twice what it can run at once (`EngineLimits.sequences`:
    its `max_num_seqs`, or fewer where its KV cache binds): one batch running, the next waiting in
    vLLM's queue to fill slots as sequences end. A crash loses only the shards held.
    """

    def __init__(
        self,
        model: ModelConfig,
        gen: GenerationConfig,
        *,
        backend_options: Mapping[str, Any] | None = None,
        shards_in_flight: int | None = None,
        reserve: bool = True,
    ) -> None:
        """`backend_options` go to the backend on top of what the config sets (e.g. vLLM's
        `enforce_eager=True`: no graph compilation, so a faster start for short jobs and tests).
        `shards_in_flight` per engine overrides the engine's own limits (and `gen.shards_in_flight`).
        `reserve=False` (CPU engines only): the engines hold no placement group, so that they can stay
        started, idle, while other work (training) has every CPU; they lend no CPU to the judges."""
        require_ray()
        self.model, self.gen, self.reserve = model, gen, reserve
        self._extra_options = dict(backend_options or {})
        self.shards_in_flight = shards_in_flight or gen.shards_in_flight
        self.on_gpu = engines_on_gpu(gen)
        if self.on_gpu and not reserve:
            raise ValueError("engines on GPUs must reserve them (reserve=True)")
        self.restarts = 0
        self._launched = 0
        self._pool_tag = uuid.uuid4().hex[:6]  # placement-group names are cluster-wide: pools must not collide
        self.placement: list[dict[str, Any]] = []  # where each engine ran, replacements appended
        self._engines: list[_Engine] = []
        self._starting: dict[_Engine, asyncio.Task[None]] = {}  # replacements, until they are ready
        # A shard's request: its sequences and sampling; a higher priority is a lower rank.
        self._admission: Admission[tuple[int, Sampling], _Engine] = Admission(self._take, self._give_back)
        self._tickets = itertools.count()
        try:
            self._engines = [self._launch() for _ in range(gen.num_engines)]
            self._wait_ready()
        except BaseException:
            self.shutdown()
            raise

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    def cpu_slots(self) -> list[CpuSlot]:
        """The engines' CPUs, for CPU tasks to run in (one slot per bundle; idle: its engine holds no shard)."""
        return [CpuSlot(PlacementGroupSchedulingStrategy(placement_group=e.group, placement_group_bundle_index=i),
                        bundle["CPU"], idle=e.shards == 0)
                for e in self._engines if e.group is not None
                for i, bundle in enumerate(self._bundles()) if bundle.get("CPU")]

    @property
    def actors(self) -> list[Any]:
        """The live engine actors (for monitoring, and for tests that kill one)."""
        return [e.actor for e in self._engines]

    @property
    def limits(self) -> list[EngineLimits | None]:
        """What each engine reported when it started."""
        return [e.limits for e in self._engines]

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
            if self.gen.max_num_seqs is not None:
                options["max_num_seqs"] = self.gen.max_num_seqs
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

    def load(self, model_path: str) -> None:
        """Load another checkpoint of the same architecture and tokenizer into every engine (vLLM only),
        between generations; replacements start from it too."""
        refs = [e.actor.load.remote(model_path) for e in self._engines]
        try:
            ray.get(refs)
        except RayTaskError as exc:
            raise _plain(exc) from None
        self.model = self.model.model_copy(update={"path": model_path})

    def _launch(self) -> _Engine:
        self._launched += 1
        if not self.reserve:
            return _Engine(_EngineActor.options(num_cpus=0, scheduling_strategy=self._cpu_node()).remote(
                self.gen.backend, self._backend_options(), self._env()), None)
        group = placement_group(self._bundles(), strategy="STRICT_PACK",
                                name=f"s3ft engine {self._launched} (pool {self._pool_tag})")
        holds_gpu = self.on_gpu and self.gen.tensor_parallel_size == 1
        actor = _EngineActor.options(
            num_cpus=0,  # the bundle reserves them; judges borrow them while the engines wait
            num_gpus=1 if holds_gpu else 0,
            scheduling_strategy=PlacementGroupSchedulingStrategy(
                placement_group=group, placement_group_bundle_index=0, placement_group_capture_child_tasks=True
            ),
        ).remote(self.gen.backend, self._backend_options(), self._env())
        return _Engine(actor, group)

    def _cpu_node(self) -> Any:
        """Where an engine that reserves nothing goes: a node with CPUs, in turn, most CPUs first. Asking
        for none, it could land anywhere, on a head started with 0 CPUs too (kept for Ray's own
        processes). Hard affinity: with a soft one, Ray put engines on such a head all the same once a
        node had been restarted (the rig's test); a node lost meanwhile fails that engine's start."""
        nodes = sorted((n for n in ray.nodes() if n["Alive"] and n["Resources"].get("CPU", 0) > 0),
                       key=lambda n: (-n["Resources"]["CPU"], n["NodeID"]))
        if not nodes:
            return "DEFAULT"
        return NodeAffinitySchedulingStrategy(nodes[(self._launched - 1) % len(nodes)]["NodeID"], soft=False)

    def _wait_ready(self) -> None:
        groups = [e.group.ready() for e in self._engines if e.group is not None]
        _, waiting = ray.wait(groups, num_returns=len(groups), timeout=PLACEMENT_TIMEOUT_S)
        if waiting:
            raise ConfigError(
                f"generation asks for {len(self._engines)} engine(s) of {self._bundles()} but the Ray "
                f"cluster could not place {len(waiting)} of them in {PLACEMENT_TIMEOUT_S:.0f} s; "
                f"free now: {ray.available_resources()}. Lower generation.num_engines or "
                "generation.cpus_per_engine / tensor_parallel_size."
            )
        try:
            limits = ray.get([e.actor.ready.remote() for e in self._engines])
        except RayTaskError as exc:
            raise _plain(exc) from None
        for engine, engine_limits in zip(self._engines, limits, strict=True):
            engine.limits = engine_limits
            engine.where = ray.get(engine.actor.where.remote())
            self.placement.append(engine.where)

    def _retire(self, engine: _Engine) -> None:
        ray.kill(engine.actor, no_restart=True)
        if engine.group is not None:
            remove_placement_group(engine.group)

    def _replace(self, dead: _Engine) -> None:
        """Retire a dead engine and start a fresh one. The fresh one takes work only once it is placed and
        ready (`_join`): until then, and for ever if its node is gone and no other has room, the other
        engines do the work."""
        self._retire(dead)
        self._engines.remove(dead)
        fresh = self._launch()
        self._starting[fresh] = asyncio.get_running_loop().create_task(self._join(fresh))
        self.restarts += 1

    async def _join(self, engine: _Engine) -> None:
        try:
            engine.limits = await _result(engine.actor.ready.remote())
            engine.where = await _result(engine.actor.where.remote())
        except (RayActorError, RayTaskError) as exc:
            if self._starting.pop(engine, None) is not None:
                log.warning("generation: a replacement engine failed to start (%s)", type(exc).__name__)
                self._retire(engine)
            self._fail_if_no_engine()
            return
        except asyncio.CancelledError:
            if self._starting.pop(engine, None) is not None:
                self._retire(engine)
            raise
        if self._starting.pop(engine, None) is None:  # the pool was shut down meanwhile
            return
        self._engines.append(engine)
        self.placement.append(engine.where)
        log.info("generation: a replacement engine is ready on %s", _node(engine.where))
        self._admission.hand_out()

    def _fail_if_no_engine(self) -> None:
        if self._engines or self._starting:
            return
        self._admission.fail(S3FTError("generation: every engine died and none could be started again"))

    # --- admission: which engine takes a shard, and when ------------------------------------------

    def _has_room(self, engine: _Engine, sampling: Sampling) -> bool:
        if engine.shards == 0:
            return True
        if self.shards_in_flight is not None or engine.limits is None:
            return engine.shards < (self.shards_in_flight or SHARDS_WITHOUT_LIMITS)
        return engine.sequences < BATCHES_HELD * engine.limits.sequences(sampling.max_tokens)

    def _take(self, request: tuple[int, Sampling]) -> _Engine | None:
        cost, sampling = request
        free = [e for e in self._engines if self._has_room(e, sampling)]
        if not free:
            return None
        engine = min(free, key=lambda e: e.sequences)
        engine.sequences += cost
        engine.shards += 1
        return engine

    def _give_back(self, engine: _Engine, request: tuple[int, Sampling]) -> None:
        cost, _ = request
        engine.sequences -= cost
        engine.shards -= 1
        self._admission.hand_out()  # the room goes to the waiting shards, highest priority first

    def has_room(self, sampling: Sampling) -> bool:
        """Would a shard start on an engine now, rather than wait?"""
        return not self._admission.waiting and any(self._has_room(e, sampling) for e in self._engines)

    # --- generation ---------------------------------------------------------------------------------

    async def generate(
        self, prompts: list[str], sampling: Sampling, priority: int = 0, key: Any = None
    ) -> list[list[str]]:
        """Completions of one shard, once an engine has room for it (higher `priority` first). A shard
        whose engine died (or whose node was lost) is redone on another engine, and the log names the
        node and the shard (`key`)."""
        request = (max(1, len(prompts) * sampling.n), sampling)
        attempts = 0
        while True:
            self._fail_if_no_engine()
            engine = await self._admission.enter(-priority, request)
            attempts += 1
            try:
                return await self._on(engine, prompts, sampling)
            except RayActorError as exc:
                if attempts >= MAX_SHARD_ATTEMPTS:
                    raise
                log.warning("generation: shard %s is redone: its engine on %s died (%s)", key,
                            _node(engine.where), _why(exc, engine))
                if engine in self._engines:  # its first lost shard: replace it once
                    self._replace(engine)
            except RayTaskError as exc:
                raise _plain(exc) from None
            finally:
                self._give_back(engine, request)

    async def _on(self, engine: _Engine, prompts: list[str], sampling: Sampling) -> list[list[str]]:
        """One shard's completions from `engine`: added to its batch, handed back by its `drive` loop."""
        ticket = next(self._tickets)
        done = engine.tickets[ticket] = asyncio.get_running_loop().create_future()
        added = engine.actor.add.remote(ticket, prompts, sampling)  # Ray runs it before the `drive` after it
        if engine.driving is None or engine.driving.cancelling():
            engine.driving = asyncio.get_running_loop().create_task(self._drive(engine))
        try:
            await _result(added)
            return await done
        finally:
            engine.tickets.pop(ticket, None)
            if done.done() and not done.cancelled():
                done.exception()  # seen: where its add failed too (a dead engine), that error is the one raised
            if not engine.tickets and engine.driving is not None:
                engine.driving.cancel()  # a shard abandoned (its stream closed) leaves no loop behind

    async def _settled(self) -> None:
        """Wait for the `drive` loops cancelled as their last shard left: an event loop about to close
        must not hold them."""
        await asyncio.gather(*(e.driving for e in self._engines if e.driving is not None), return_exceptions=True)

    async def _drive(self, engine: _Engine) -> None:
        """Keep `drive` calls going on the engine while it holds shards: each returns when at least one is
        complete, and the next already waits in the actor's queue, so the engine steps on at once rather
        than a driver round trip later. Shards added meanwhile queue behind it and join the batch at a
        later `drive`, while the engine works through the two batches it holds. Its failure (the engine
        died, or raised) is every held shard's."""
        try:
            held = -1
            while held != len(engine.tickets):
                held = len(engine.tickets)
                await asyncio.sleep(FILL_S)
            calls = deque([engine.actor.drive.remote()])
            while engine.tickets:
                calls.append(engine.actor.drive.remote())
                for ticket, completions in (await _result(calls.popleft())).items():
                    if (done := engine.tickets.get(ticket)) is not None and not done.done():
                        done.set_result(completions)
        except (RayActorError, RayTaskError) as exc:
            for done in engine.tickets.values():
                if not done.done():
                    done.set_exception(exc)
        finally:
            if engine.driving is asyncio.current_task():
                engine.driving = None

    def generate_shards(
        self, items: Iterable[tuple[K, list[str]]], sampling: Sampling
    ) -> Iterator[tuple[K, list[list[str]]]]:
        """Yield `(key, completions)` per shard as it finishes (any order); `items` is read lazily,
        a shard only when an engine has room for it."""
        loop = asyncio.new_event_loop()
        stream = self._stream(items, sampling)
        try:
            while True:
                try:
                    yield loop.run_until_complete(anext(stream))
                except StopAsyncIteration:
                    return
        finally:
            loop.run_until_complete(stream.aclose())
            loop.close()

    async def _stream(
        self, items: Iterable[tuple[K, list[str]]], sampling: Sampling
    ) -> AsyncIterator[tuple[K, list[list[str]]]]:
        source = iter(items)
        running: dict[asyncio.Task[list[list[str]]], K] = {}
        try:
            while True:
                while not running or self.has_room(sampling):
                    if (item := next(source, None)) is None:
                        break
                    running[asyncio.create_task(self.generate(list(item[1]), sampling, key=item[0]))] = item[0]
                    await asyncio.sleep(0)  # it takes its room now, before the next shard is weighed
                if not running:
                    return
                done, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    yield running.pop(task), task.result()
        finally:
            for task in running:
                task.cancel()
            await asyncio.gather(*running, return_exceptions=True)
            await self._settled()

    def shutdown(self) -> None:
        """Stop the engines (their own subprocesses too) and hand their resources back to the cluster."""
        starting, self._starting = self._starting, {}
        for engine in starting:
            self._retire(engine)
        engines, self._engines = self._engines, []
        if engines:
            ray.wait([e.actor.close.remote() for e in engines], num_returns=len(engines), timeout=30)
        for engine in engines:
            self._retire(engine)


def _plain(exc: RayTaskError) -> Exception:
    """Our own error raised inside an engine (a ModelError, say) as itself, for the CLI to print plainly."""
    return exc.cause if isinstance(exc.cause, S3FTError) else exc


async def _result(ref: ray.ObjectRef) -> Any:
    return await asyncio.wrap_future(ref.future())


def _node(where: dict[str, Any] | None) -> str:
    return "an unknown node" if where is None else f"node {where['address']} ({where['hostname']})"


def _why(exc: Exception, engine: _Engine) -> str:
    """Whether the engine's node is gone (a lost machine) or only the engine died."""
    node_id = (engine.where or {}).get("node_id")
    alive = {n["NodeID"]: n["Alive"] for n in ray.nodes()}
    if node_id and not alive.get(node_id, False):
        return "its node is lost"
    return type(exc).__name__
