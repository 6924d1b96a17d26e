"""Residency: which models are loaded, when they load, and when they leave.

Rules (the bar is Ollama's scheduler, which evicts by keep_alive then name and ignores size):
- one load at a time; requests for a model that is loading wait for it;
- a resident runner whose load options cover the request serves it (no reload for a smaller num_ctx);
- eviction takes idle models only, least recently used first, preferring one whose departure alone
  frees enough; pinned models (keep_alive < 0) are never evicted;
- a model that cannot fit even after evicting everything evictable is refused with the numbers;
- admission per model: at most ``parallel`` running and ``max_queue`` waiting requests (for a
  load or for a slot in the runner, whose queue runs them by priority); beyond that → ServerBusy
  (503) at once, starting nothing; a request that leaves (its client went away) frees its place
  at once.

Time comes from an injectable clock so keep_alive expiry is testable without sleeping. The memory
estimate reads GGUF metadata, so it runs on a thread; unloads and runner watches are background tasks
owned here (``Tasks``) and cancelled by ``shutdown``.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from llmhost.daemon.runner_client import LoadSpec, RpcShare, Runner, RunnerFactory
from llmhost.daemon.tasks import Tasks
from llmhost.errors import InsufficientMemory, ServerBusy
from llmhost.units import format_size

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelIdentity:
    """The installed model a request is for, as /api/ps shows it. Copies of a model share one
    runner, which shows the one it was last used as."""

    name: str
    digest: str = ""  # sha256 hex of the manifest
    details: Mapping[str, Any] = field(default_factory=dict)  # Ollama's ``details`` object


@dataclass
class Resident:
    """A loaded model and its books."""

    model: ModelIdentity
    spec: LoadSpec
    runner: Runner
    size: int
    load_duration: float
    keep_alive: float
    last_used: float
    refcount: int = 0
    expires_at: float | None = None  # clock time; None while busy or pinned
    unloading: bool = False

    @property
    def name(self) -> str:
        return self.model.name

    @property
    def memory(self) -> int:
        """Host bytes held now: the runner's own report (refreshed by its watchdog), else the load-time
        size; plus what its parked prompts may still take (``engine.kv_host``), so that the memory
        budget never lets another model into room a runner's budget has promised it."""
        held = getattr(self.runner, "memory_bytes", 0)
        if not held:
            return self.size  # the estimate, which counts the whole budget
        return held + getattr(self.runner, "host_cache_reserve", 0)

    @property
    def vram(self) -> int:
        """GPU bytes its offloaded layers hold (0 on the CPU)."""
        return getattr(self.runner, "vram_bytes", 0)

    @property
    def pinned(self) -> bool:
        return math.isinf(self.keep_alive)

    @property
    def idle(self) -> bool:
        return self.refcount == 0


@dataclass(frozen=True)
class ResidentView:
    """A loaded model as /api/ps and /metrics show it, read from residency's books at one moment."""

    model: ModelIdentity
    memory: int  # host bytes its runner holds (what LLMHOST_MAX_MEMORY budgets)
    size_vram: int  # GPU bytes of its offloaded layers' weights and KV cache
    context_length: int
    parallel: int
    leases: int  # requests holding it now (running or waiting in its runner)
    expires_at: float | None  # wall clock; None when pinned
    engine: Mapping[str, Any]  # the runner's engine counters from its last /health (empty before one)
    rpc: tuple[RpcShare, ...] = ()  # what each RPC worker holds for it (/api/ps)

    @property
    def name(self) -> str:
        return self.model.name

    @property
    def size(self) -> int:
        """Everything it holds, host and GPU (Ollama's ``size``; ``size_vram`` is the GPU's share)."""
        return self.memory + self.size_vram


@dataclass
class Admission:
    """The requests admitted for one model (a runner key) and not yet finished."""

    name: str  # the name the model was last asked for, for metrics
    parallel: int  # of these, this many run at once; the rest wait
    count: int = 0

    @property
    def waiting(self) -> int:
        return max(0, self.count - self.parallel)


class ResidencyObserver:
    """What residency reports as it works (the daemon's metrics listen); here every report is ignored."""

    def loaded(self, name: str, seconds: float) -> None:
        """A runner for ``name`` is ready after ``seconds``."""

    def evicted(self, name: str) -> None:
        """An idle model was unloaded to make room for another."""

    def crashed(self, name: str) -> None:
        """A runner exited on its own."""

    def restarted(self, name: str) -> None:
        """A model whose runner crashed is loaded again."""

    def rejected(self, name: str) -> None:
        """A request found the model's running and waiting places full (503)."""


class Lease:
    """One request's hold on a resident model; ``release()`` (or leave ``with lease:``) when it ends.

    Releasing twice is harmless, so every path that may end a request can release.
    """

    def __init__(self, residency: Residency, resident: Resident, load_duration: float):
        self.residency = residency
        self.resident = resident
        self.runner = resident.runner
        self.load_duration = load_duration
        self._released = False

    def release(self) -> None:
        if not self._released:
            self._released = True
            self.residency._release(self.resident)

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()


class Residency:
    """Loads, shares, expires and evicts runners."""

    def __init__(
        self,
        factory: RunnerFactory,
        *,
        max_loaded: int,
        max_queue: int,
        memory_budget: int,
        estimate: Callable[[LoadSpec], int] = lambda spec: 0,
        host_cache: Callable[[LoadSpec], int] = lambda spec: 0,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ):
        self._factory = factory
        self._max_loaded = max_loaded
        self._max_queue = max_queue
        self.memory_budget = memory_budget
        self._estimate = estimate
        self._host_cache = host_cache  # the part of an estimate kept for parked prompts
        self._clock = clock
        self._wall = wall_clock
        self._residents: dict[LoadSpec, Resident] = {}
        self._load_lock = asyncio.Lock()
        self._admissions: dict[str, Admission] = {}  # by runner key
        self._crashed: set[str] = set()  # keys whose runner crashed and has not been loaded again
        self.observer = ResidencyObserver()
        self._changed = asyncio.Event()
        self._tasks = Tasks()
        self._reaper: asyncio.Task[None] | None = None  # one of _tasks, restarted as keep_alives change
        self._closed = False

    # ---- queries -------------------------------------------------------------------------------

    def residents(self) -> list[Resident]:
        return list(self._residents.values())

    def views(self) -> list[ResidentView]:
        """Every loaded model as /api/ps and /metrics show it (runners' health as last answered)."""
        return [self._view(r) for r in self._residents.values()]

    def _view(self, resident: Resident) -> ResidentView:
        health = getattr(resident.runner, "last_health", None) or {}
        return ResidentView(model=resident.model, memory=resident.memory, size_vram=resident.vram,
                            context_length=resident.spec.num_ctx, parallel=resident.spec.parallel,
                            leases=resident.refcount, expires_at=self.expires_wall(resident),
                            engine=health.get("engine") or {}, rpc=tuple(getattr(resident.runner, "rpc", ())))

    def expires_wall(self, resident: Resident) -> float | None:
        """Wall-clock expiry for display (busy models show now + keep_alive, pinned ones None)."""
        if resident.pinned:
            return None
        if resident.expires_at is not None:
            return self._wall() + (resident.expires_at - self._clock())
        return self._wall() + resident.keep_alive

    def admissions(self) -> list[Admission]:
        """Per model with requests in flight: how many are admitted (running or waiting)."""
        return list(self._admissions.values())

    def admitted(self, key: str) -> int:
        """Requests for runner key ``key`` admitted and not finished (running or waiting)."""
        admission = self._admissions.get(key)
        return admission.count if admission else 0

    def _usable(self, spec: LoadSpec) -> Resident | None:
        for resident in self._residents.values():
            if not resident.unloading and resident.spec.covers(spec):
                return resident
        return None

    # ---- acquire / release ---------------------------------------------------------------------

    async def acquire(self, spec: LoadSpec, model: ModelIdentity, keep_alive: float) -> Lease:
        """Hold a runner for ``spec``, loading it (and evicting others) if needed.

        ServerBusy at once, before anything starts, when the model already has ``parallel`` running
        and ``max_queue`` waiting requests, counting those waiting for its load.
        """
        self._admit(spec, model.name)
        try:
            return await self._hold(spec, model, keep_alive)
        except BaseException:  # refused, failed or cancelled (the client went away): its place is free
            self._leave(spec.key)
            raise

    def _admit(self, spec: LoadSpec, name: str) -> None:
        admission = self._admissions.setdefault(spec.key, Admission(name, spec.parallel))
        if admission.count >= admission.parallel + self._max_queue:
            self.observer.rejected(admission.name)
            raise ServerBusy()
        admission.count += 1
        admission.name, admission.parallel = name, spec.parallel

    def _leave(self, key: str) -> None:
        admission = self._admissions[key]
        admission.count -= 1
        if admission.count == 0:
            del self._admissions[key]

    async def _hold(self, spec: LoadSpec, model: ModelIdentity, keep_alive: float) -> Lease:
        while True:
            resident = self._usable(spec)
            if resident is not None:
                return self._take(resident, model, keep_alive, 0.0)
            async with self._load_lock:
                if self._usable(spec) is not None:
                    continue
                needed = await asyncio.to_thread(self._estimate, spec)  # reads GGUF metadata
                await self._make_room(spec, needed)
                resident = await self._load(spec, model, keep_alive, needed)
                return self._take(resident, model, keep_alive, resident.load_duration)

    def _take(self, resident: Resident, model: ModelIdentity, keep_alive: float, load_duration: float) -> Lease:
        resident.refcount += 1
        resident.model = model  # /api/ps shows the name it was last used under (a copy may outlive the original)
        resident.keep_alive = keep_alive
        resident.expires_at = None
        return Lease(self, resident, load_duration)

    def _release(self, resident: Resident) -> None:
        resident.refcount -= 1
        self._leave(resident.spec.key)
        resident.last_used = self._clock()
        if resident.refcount == 0 and self._residents.get(resident.spec) is resident:
            if resident.keep_alive <= 0 or resident.unloading:
                self._tasks.spawn(self._unload(resident), f"unload {resident.name}")
            elif not resident.pinned:
                resident.expires_at = self._clock() + resident.keep_alive
                self._schedule_reaper()
        self._notify()

    # ---- loading and eviction ------------------------------------------------------------------

    async def _load(self, spec: LoadSpec, model: ModelIdentity, keep_alive: float, estimate: int) -> Resident:
        started = self._clock()
        runner = await self._factory.start(spec)
        load_duration = self._clock() - started
        if estimate and runner.memory_bytes:
            log.info("%s: estimated %s, runner reports %s (estimate error %+.0f%%)", model.name,
                     format_size(estimate), format_size(runner.memory_bytes),
                     100 * (estimate / runner.memory_bytes - 1))
        resident = Resident(model=model, spec=spec, runner=runner, size=runner.memory_bytes or estimate,
                            load_duration=load_duration, keep_alive=keep_alive, last_used=self._clock())
        self._residents[spec] = resident
        self._tasks.spawn(self._watch(resident), f"watch the runner of {model.name}")
        self.observer.loaded(model.name, load_duration)
        if spec.key in self._crashed:
            self._crashed.discard(spec.key)
            self.observer.restarted(model.name)
        return resident

    async def _watch(self, resident: Resident) -> None:
        """Supervision: a runner that exits on its own is forgotten, so the next request reloads it."""
        status = await resident.runner.wait_exited()
        if self._residents.get(resident.spec) is resident:
            log.warning("runner for %s exited unexpectedly (status %s)", resident.name, status)
            del self._residents[resident.spec]
            self._crashed.add(resident.spec.key)
            self.observer.crashed(resident.name)
            self._notify()

    def _used(self) -> int:
        return sum(r.memory for r in self._residents.values())

    async def _make_room(self, spec: LoadSpec, needed: int) -> None:
        """Evict idle models until ``spec`` (``needed`` bytes) fits in count and memory; wait for busy ones if needed."""
        if needed > self.memory_budget:
            raise InsufficientMemory(
                f"model requires {format_size(needed)} of memory but only {format_size(self.memory_budget)} "
                f"is available to llmhost (LLMHOST_MAX_MEMORY){await self._host_cache_share(spec)}")
        for stale in [r for r in self._residents.values() if r.spec.key == spec.key]:
            stale.unloading = True  # loaded with options that do not cover this request
        while True:
            for stale in [r for r in self._residents.values() if r.unloading and r.idle]:
                await self._unload(stale)
            over_count = len(self._residents) >= self._max_loaded
            short = self._used() + needed - self.memory_budget
            if not over_count and short <= 0:
                return
            victim = self._choose_victim(short)
            if victim is not None:
                log.info("evicting %s to make room", victim.name)
                self.observer.evicted(victim.name)
                await self._unload(victim)
                continue
            if not any(not r.pinned for r in self._residents.values()):
                raise InsufficientMemory(self._no_room_message(needed, over_count)
                                         + ("" if over_count else await self._host_cache_share(spec)))
            changed = self._changed
            await changed.wait()

    def _choose_victim(self, short: int) -> Resident | None:
        idle = sorted((r for r in self._residents.values() if r.idle and not r.pinned),
                      key=lambda r: r.last_used)
        for resident in idle:  # least recently used that alone frees enough
            if resident.memory >= short:
                return resident
        return idle[0] if idle else None

    async def _host_cache_share(self, spec: LoadSpec) -> str:
        """What of a refused model's requirement is room for parked prompts, for the message."""
        try:
            share = await asyncio.to_thread(self._host_cache, spec)  # auto reads the GGUF's metadata
        except Exception:  # the message goes out without it
            return ""
        if share <= 0:
            return ""
        return (f"; {format_size(share)} of it is room for parked prompts, which LLMHOST_KV_HOST_CACHE sets "
                "(a smaller size, or off, needs less)")

    def _no_room_message(self, needed: int, over_count: bool) -> str:
        if over_count:
            return (f"cannot load another model: {len(self._residents)} models are loaded "
                    "(LLMHOST_MAX_LOADED_MODELS) and all are pinned with keep_alive < 0")
        available = self.memory_budget - sum(r.memory for r in self._residents.values() if r.pinned)
        return (f"model requires {format_size(needed)} of memory but only {format_size(max(available, 0))} "
                "can be freed (the rest is held by pinned models)")

    async def _unload(self, resident: Resident) -> None:
        if self._residents.get(resident.spec) is resident:
            del self._residents[resident.spec]
        resident.unloading = True
        await resident.runner.close()
        self._notify()

    # ---- keep_alive ----------------------------------------------------------------------------

    async def expire(self, key: str) -> bool:
        """Unload every runner of model ``key`` now, or as soon as it is idle; True if any was loaded."""
        found = False
        for resident in [r for r in self._residents.values() if r.spec.key == key]:
            found = True
            resident.keep_alive = 0
            resident.unloading = True
            if resident.idle:
                await self._unload(resident)
        return found

    async def reap(self) -> None:
        """Unload idle models whose keep_alive has run out."""
        now = self._clock()
        for resident in list(self._residents.values()):
            if resident.idle and resident.expires_at is not None and resident.expires_at <= now:
                log.info("keep_alive expired for %s", resident.name)
                await self._unload(resident)

    def _schedule_reaper(self) -> None:
        # Restarted on every release: a new, shorter keep_alive must not wait for an older, longer one.
        if self._reaper is not None:
            self._reaper.cancel()
        self._reaper = self._tasks.spawn(self._reap_loop(), "keep_alive reaper")

    async def _reap_loop(self) -> None:
        while not self._closed:
            due = [r.expires_at for r in self._residents.values() if r.idle and r.expires_at is not None]
            if not due:
                return
            await asyncio.sleep(max(0.0, min(due) - self._clock()) + 0.01)
            await self.reap()

    # ---- shutdown ------------------------------------------------------------------------------

    async def shutdown(self) -> None:
        """Stop every runner, then end the background work (watches, the reaper, pending unloads)."""
        self._closed = True
        if self._reaper is not None:
            self._reaper.cancel()
        await asyncio.gather(*(self._unload(r) for r in list(self._residents.values())),
                             return_exceptions=True)
        await self._tasks.aclose()

    def _notify(self) -> None:
        event, self._changed = self._changed, asyncio.Event()
        event.set()
