"""The daemon's side of the runner seam: a runner process reached over its private unix socket.

The daemon sees a loaded model only through ``Runner`` (and starts one through ``RunnerFactory``),
so tests plug in a fake runner with canned answers. ``ProcessRunner`` is the real one: a
``python -m llmhost.engine.spare`` child that imports everything, is handed its model on stdin and
says ``ready`` on stdout (docs/runner-protocol.md, "Start"); the daemon then notices when the
process dies (a llama.cpp abort or segfault must never take the daemon down).

``ProcessRunnerFactory`` can keep one such process waiting (``keep_spare``), so a cold start skips
Python's start-up and imports (~0.3 s of the ~0.7 s it took). It chooses the runner's GPU
``Placement`` on a thread (GGUF metadata, nvidia-smi), never on the event loop.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import os
import signal
import sys
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from llmhost.api.runner_protocol import CompletionBody
from llmhost.api.types import JsonObject
from llmhost.daemon.tasks import Tasks
from llmhost.errors import LlmhostError, RunnerError, from_status

if TYPE_CHECKING:  # imported where first used, as before
    import aiohttp

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadSpec:
    """Everything that decides how a runner is started; a change in any of these needs a new runner."""

    key: str  # digest of the model blob: copies of a model share one runner
    model_path: Path
    num_ctx: int
    parallel: int
    num_batch: int
    num_gpu: int
    threads: int
    main_gpu: int = 0  # llama.cpp's main_gpu (the main_gpu option)
    use_mmap: bool = True
    kv_cache_type: str = "f16"  # api.options.KV_CACHE_TYPES
    cpu_repack: str = "auto"  # engine.cpu.REPACK_MODES (LLMHOST_CPU_REPACK)
    flash_attention: str = "auto"  # api.option_table.FLASH_ATTENTION_MODES (LLMHOST_FLASH_ATTENTION)
    kv_host_cache: int = 0  # bytes for parked prompts (LLMHOST_KV_HOST_CACHE); -1: auto
    projector: Path | None = None  # a vision model's projector GGUF (llama.cpp's --mmproj)
    rpc_servers: tuple[str, ...] = ()  # llama.cpp RPC workers, host:port (the rpc_servers option)

    def covers(self, other: LoadSpec) -> bool:
        """True when a runner started with ``self`` can serve a request that asks for ``other``
        (one with a projector also serves the text-only copies of its model)."""
        return (
            self.key == other.key
            and other.projector in (None, self.projector)
            and self.num_ctx >= other.num_ctx
            and self.num_batch == other.num_batch
            and self.num_gpu == other.num_gpu
            and self.main_gpu == other.main_gpu
            and self.use_mmap == other.use_mmap
            and self.threads == other.threads
            and self.kv_cache_type == other.kv_cache_type
            and self.cpu_repack == other.cpu_repack
            and self.flash_attention == other.flash_attention
            and self.kv_host_cache == other.kv_host_cache
            and self.rpc_servers == other.rpc_servers
        )


@dataclass(frozen=True)
class Placement:
    """Where a runner's layers go, chosen when it starts (``daemon/gpu.py``); not part of its spec,
    so a different choice for ``num_gpu = -1`` never forces a reload."""

    gpu_layers: int = 0  # llama.cpp's n_gpu_layers: the last blocks, then the output layer
    vram_bytes: int = 0  # the weights and KV cache of those layers (0 on the CPU)
    rpc_layers: tuple[int, ...] = ()  # with RPC workers: layers per worker device (the runner's --rpc-layers)
    rpc: tuple[RpcShare, ...] = ()  # with RPC workers: what each holds (``daemon/workers.py``)


@dataclass(frozen=True)
class RpcShare:
    """What one RPC worker holds for a runner: its layers and their weights and KV cache (/api/ps)."""

    server: str  # host:port
    layers: int
    bytes: int


def requested_placement(spec: LoadSpec) -> Placement:
    """Without a GPU probe: the layers ``num_gpu`` asks for (none for -1), no GPU memory counted."""
    return Placement(max(spec.num_gpu, 0))


class Runner(Protocol):
    """A loaded model, as the daemon sees it (the ``LoadSpec`` it was started with is kept beside
    it, on its ``Resident``)."""

    memory_bytes: int  # host memory it holds (resident set)
    vram_bytes: int  # GPU memory its offloaded layers hold (its Placement's)

    def completion(self, body: CompletionBody) -> AsyncGenerator[JsonObject, None]:
        """Stream runner-protocol lines (``{"content"}``…, then a final ``{"done": true, …}``).

        The caller closes it (``contextlib.aclosing``), so a client that leaves mid-stream ends the
        runner's request at once rather than when the generator is collected."""

    async def embed(self, body: JsonObject) -> JsonObject:
        """Embeddings for ``{"input": [...], "truncate": bool}``."""

    async def rerank(self, body: JsonObject) -> JsonObject:
        """``{"query", "documents": [...], "truncate"}`` → ``{"scores": [...], "prompt_eval_count"}``
        (one score per document, in their order)."""

    async def tokenize(self, body: JsonObject) -> JsonObject:
        """``{"content": str}`` → ``{"tokens": [...]}``."""

    async def detokenize(self, body: JsonObject) -> JsonObject:
        """``{"tokens": [...], "pieces": bool}`` → ``{"content": str}`` (and each token's piece)."""

    async def health(self) -> JsonObject:
        """The runner's ``/health``: its engine's counters under ``engine``."""

    async def close(self) -> None:
        """Stop the runner and give its memory back."""

    async def wait_exited(self) -> int:
        """Return when the runner is gone (exit status)."""


class RunnerFactory(Protocol):
    async def start(self, spec: LoadSpec) -> Runner:
        """Start a runner and return once it is ready; RunnerError with the reason otherwise."""


class ProcessRunner:
    """A runner child process: a spare until ``hand_over`` gives it a model; then requests go over
    HTTP on its unix socket."""

    def __init__(self, proc: asyncio.subprocess.Process, on_request: Callable[[int], None] = lambda delta: None):
        self.spec: LoadSpec | None = None  # set by hand_over(); a spare has none
        self.memory_bytes = 0
        self.vram_bytes = 0  # set by the factory from the placement it chose
        self.host_cache_bytes = 0  # its budget for parked prompts (--kv-host-cache), set by the factory
        self.rpc: tuple[RpcShare, ...] = ()  # what its RPC workers hold (the placement's)
        self.last_health: JsonObject = {}  # the latest /health answer (watchdog pings, metrics scrapes)
        self._proc = proc
        self._socket_path: Path | None = None
        self._stderr_tail: collections.deque[str] = collections.deque(maxlen=40)
        self._tasks = Tasks()  # its pipe readers and watchdog, ended by close()
        self._stderr_task = self._tasks.spawn(self._drain_stderr(), f"runner {proc.pid} stderr")
        loop = asyncio.get_running_loop()
        # Control lines from stdout (engine/control.py); None when stdout ends first.
        self._announced: asyncio.Future[JsonObject | None] = loop.create_future()
        self._ready: asyncio.Future[JsonObject | None] = loop.create_future()
        self._tasks.spawn(self._read_control(), f"runner {proc.pid} stdout")
        self._session: aiohttp.ClientSession | None = None
        self._watchdog: asyncio.Task[None] | None = None
        self._on_request = on_request  # +1 when a request starts, -1 when it ends
        self._stopped_for: str | None = None  # why the daemon killed it, when it did

    @property
    def host_cache_reserve(self) -> int:
        """What its parked prompts may still take: the budget less what they hold (last /health)."""
        engine = self.last_health.get("engine")
        parked = engine.get("parked_bytes", 0) if isinstance(engine, dict) else 0
        return max(0, self.host_cache_bytes - int(parked or 0))

    def watch(self, interval: float, misses: int) -> None:
        """Kill the runner if it stops answering ``/health`` (``misses`` times in a row).

        A hung process (stopped, deadlocked in llama.cpp) never exits by itself; killing it lets
        supervision end its requests with an error and reload the model on the next one.
        """
        self._watchdog = self._tasks.spawn(self._watch_health(interval, misses), f"runner {self.pid} watchdog")

    async def _watch_health(self, interval: float, misses: int) -> None:
        import aiohttp

        missed = 0
        while self.alive:
            await asyncio.sleep(interval)
            try:
                health = await asyncio.wait_for(self.health(), interval)
                missed = 0
                # Resident memory grows after ready (compute buffers of the first full batch).
                self.memory_bytes = int(health.get("memory_bytes") or self.memory_bytes)
            except (asyncio.TimeoutError, aiohttp.ClientError, ConnectionError, OSError):
                missed += 1
                if missed >= misses and self.alive:
                    log.warning("runner %d stopped answering; killing it", self.pid)
                    self._stopped_for = (f"the model runner stopped answering ({misses} health checks in a row "
                                         "went unanswered) and was stopped; the next request loads it again")
                    with contextlib.suppress(ProcessLookupError):
                        self._proc.kill()

    @property
    def pid(self) -> int:
        return self._proc.pid

    @property
    def alive(self) -> bool:
        return self._proc.returncode is None

    @property
    def announcement(self) -> JsonObject | None:
        """The spare's ``spare`` line (what it loaded), once it has imported everything."""
        return self._announced.result() if self._announced.done() else None

    async def wait_announced(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for the spare's announcement."""
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._announced), timeout)

    async def _drain_stderr(self) -> None:
        # llama.cpp logs a lot; an undrained pipe would block the runner.
        assert self._proc.stderr is not None
        async for raw in self._proc.stderr:
            line = raw.decode(errors="replace").rstrip()
            self._stderr_tail.append(line)
            log.debug("runner %d: %s", self._proc.pid, line)

    async def _read_control(self) -> None:
        assert self._proc.stdout is not None
        try:
            async for raw in self._proc.stdout:
                kind, _, payload = raw.decode(errors="replace").strip().partition(" ")
                future = {"spare": self._announced, "ready": self._ready}.get(kind)
                if future is not None and not future.done():
                    future.set_result(_json_object(payload))
                elif kind:
                    log.debug("runner %d (stdout): %s", self._proc.pid, raw.decode(errors="replace").rstrip())
        finally:
            for future in (self._announced, self._ready):
                if not future.done():
                    future.set_result(None)

    async def stderr_drained(self) -> None:
        """Wait (up to 2 s) until everything the process wrote to stderr has been read.

        The reader is neither cancelled nor re-raised here (``asyncio.wait``), while the caller's own
        cancellation still propagates.
        """
        await asyncio.wait({self._stderr_task}, timeout=2)

    def failure_reason(self) -> str:
        """Why it ended: stopped by the watchdog, its own ``error:`` line, or its exit status."""
        if self._stopped_for is not None:
            return self._stopped_for
        for line in reversed(self._stderr_tail):
            if line.startswith("error: "):
                return line[len("error: "):]
        code = self._proc.returncode
        if code is not None and code < 0:
            return f"model runner crashed (signal {-code}); see the daemon log with LLMHOST_DEBUG=1"
        return f"model runner exited with status {code}"

    def hand_over(self, spec: LoadSpec, args: list[str], socket_path: Path) -> None:
        """Give a spare its model (a process started for one has its arguments already)."""
        self.spec, self._socket_path = spec, socket_path
        self.resume()
        stdin = self._proc.stdin
        if stdin is not None:
            # One short line into an empty pipe: written at once, no drain needed. A spare that
            # died meanwhile never says ready, which wait_ready reports.
            with contextlib.suppress(ConnectionError):
                stdin.write(b"load " + json.dumps({"args": args}).encode() + b"\n")
                stdin.close()  # it reads one line; EOF tells a runner nothing more is coming

    async def wait_ready(self) -> JsonObject:
        """Wait for ``ready``; the health it reports. RunnerError with the reason if it exits."""
        health = await self._ready
        if health is None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._proc.wait(), 5)
            await self.stderr_drained()
            raise RunnerError(f"failed to load model: {self.failure_reason()}")
        self.memory_bytes = int(health.get("memory_bytes") or 0)
        return health

    def _http(self) -> aiohttp.ClientSession:
        import aiohttp

        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.UnixConnector(path=str(self._socket_path)),
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
            )
        return self._session

    async def health(self) -> JsonObject:
        async with self._http().get("http://runner/health") as resp:
            resp.raise_for_status()
            self.last_health = await resp.json()
            return self.last_health

    async def completion(self, body: CompletionBody) -> AsyncGenerator[JsonObject, None]:
        import aiohttp

        self._on_request(+1)
        try:
            async with self._http().post("http://runner/completion", json=body) as resp:
                if resp.status >= 400 and resp.content_type == "application/json":
                    raise _error_from(resp.status, (await resp.json()).get("error", "runner error"))
                # Whatever has arrived, split here: cheaper per token than aiohttp's readline.
                rest = b""
                async for data in resp.content.iter_any():
                    *lines, rest = (rest + data).split(b"\n")
                    for line in lines:
                        if line:
                            obj = json.loads(line)
                            if "done" in obj or "error" in obj:  # the final line: routes read no further
                                await _read_to_end(resp)
                            yield obj
                if rest.strip():
                    yield json.loads(rest)
        except (aiohttp.ClientError, ConnectionError) as e:
            await self._raise_if_dead(e)
        finally:
            self._on_request(-1)

    async def embed(self, body: JsonObject) -> JsonObject:
        self._on_request(+1)
        try:
            return await self._post("/embed", body)
        finally:
            self._on_request(-1)

    async def rerank(self, body: JsonObject) -> JsonObject:
        self._on_request(+1)  # a long list keeps the CPUs busy like a prompt: the spare pauses
        try:
            return await self._post("/rerank", body)
        finally:
            self._on_request(-1)

    async def tokenize(self, body: JsonObject) -> JsonObject:
        return await self._post("/tokenize", body)

    async def detokenize(self, body: JsonObject) -> JsonObject:
        return await self._post("/detokenize", body)

    async def _post(self, path: str, body: JsonObject) -> JsonObject:
        """One JSON request answered by one JSON object; the runner's ``{"error"}`` raises."""
        import aiohttp

        try:
            async with self._http().post("http://runner" + path, json=body) as resp:
                data: JsonObject = await resp.json()  # the runner answers every request with an object
                if resp.status >= 400:
                    raise _error_from(resp.status, data.get("error", "runner error"))
                return data
        except (aiohttp.ClientError, ConnectionError) as e:
            await self._raise_if_dead(e)
            raise AssertionError("unreachable") from e

    def pause(self) -> None:
        """Stop the process (SIGSTOP): a spare must not import while requests are served."""
        self._signal(signal.SIGSTOP)

    def resume(self) -> None:
        self._signal(signal.SIGCONT)

    def _signal(self, sig: int) -> None:
        if self.alive:
            with contextlib.suppress(ProcessLookupError):
                self._proc.send_signal(sig)

    async def _raise_if_dead(self, error: Exception) -> None:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._proc.wait(), 2)
        if not self.alive:
            await self.stderr_drained()
            raise RunnerError(self.failure_reason())
        raise RunnerError(f"lost connection to the model runner: {error}")

    async def wait_exited(self) -> int:
        return await self._proc.wait()

    async def close(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
        if self._session is not None:
            await self._session.close()
        if self.alive:
            with contextlib.suppress(ProcessLookupError):
                self._proc.terminate()
                self._proc.send_signal(signal.SIGCONT)  # a paused spare acts on SIGTERM only once resumed
            try:
                await asyncio.wait_for(self._proc.wait(), 10)
            except asyncio.TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    self._proc.kill()
                await self._proc.wait()
        await self._tasks.aclose()
        if self._socket_path is not None:
            with contextlib.suppress(FileNotFoundError):
                self._socket_path.unlink()


# What the daemon reads of a runner's stream after its final line, at most.
_END_WAIT = 0.5  # seconds
_END_BYTES = 64 * 1024


async def _read_to_end(resp: aiohttp.ClientResponse) -> None:
    """Read what follows a stream's final line, before passing the line on: the end of the chunked
    body, which the runner writes right after it. A response read to its end gives its connection
    back to the pool at once; one left unread is closed, and the next request pays for a new
    connection (and, when several come together, reaches the runner late: after the first has
    started alone). A runner that sends more, or takes its time, is not waited for: its connection
    is closed, as before."""
    import aiohttp

    read = 0
    try:
        while read <= _END_BYTES and (data := await asyncio.wait_for(resp.content.readany(), _END_WAIT)):
            read += len(data)
    except (asyncio.TimeoutError, OSError, aiohttp.ClientError):
        pass


def runner_batch(spec: LoadSpec) -> int:
    """The n_batch a runner is started with: ``num_batch`` within what llama.cpp can use.

    llama.cpp aborts a context whose n_batch is below its sequence count (one output row per
    sequence must fit a batch), and never puts more tokens in a batch than the KV cache holds, so
    a larger batch would only allocate (the runner's batch arrays grow with it).
    """
    return min(max(spec.num_batch, spec.parallel), spec.num_ctx * spec.parallel)


def _runner_env() -> dict[str, str]:
    # numpy's OpenBLAS would start a pool of spinning threads nobody needs beside llama.cpp's (and
    # in a spare they would be started by its idle-priority importing thread, and inherit that).
    return {**os.environ, "OPENBLAS_NUM_THREADS": "1"}


def _json_object(text: str) -> JsonObject:
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _error_from(status: int, message: str) -> LlmhostError:
    """The runner's error answer through the one status table; a status it lacks is a RunnerError."""
    return from_status(status, message, fallback=RunnerError)


def _unchanged(announcement: JsonObject) -> bool:
    """Whether every file a spare loaded is still the one on disk (same mtime and size).

    A spare started before an upgrade of llmhost or llama-cpp-python would otherwise serve the
    next model with the old code, where a fresh process would run the new one.
    """
    for path, (mtime_ns, size) in (announcement.get("files") or {}).items():
        try:
            st = os.stat(path)
        except OSError:
            return False
        if st.st_mtime_ns != mtime_ns or st.st_size != size:
            return False
    return True


class ProcessRunnerFactory:
    """Starts real runner processes with sockets in ``socket_dir`` (private to this daemon).

    With ``keep_spare()`` a new runner is usually a spare that has already imported everything
    (see ``_Spares``). Without a spare, a process is started for the model.
    """

    def __init__(self, socket_dir: Path, load_timeout: float, debug: bool = False,
                 health_interval: float = 5.0, health_misses: int = 3,
                 place: Callable[[LoadSpec], Placement] = requested_placement):
        self._socket_dir = socket_dir
        self._load_timeout = load_timeout
        self._debug = debug
        self._health_interval = health_interval
        self._health_misses = health_misses
        # Blocking (GGUF metadata, nvidia-smi): called on a thread. num_gpu = -1 (auto) stays -1 in
        # the spec, so the chosen layer count never forces a reload.
        self._place = place
        self._counter = 0
        self._in_flight = 0  # requests being served by this factory's runners
        self._spares = _Spares(self._spawn)

    def keep_spare(self) -> None:
        """From now on keep one runner process imported and waiting (call inside the event loop)."""
        self._spares.enable(paused=self._in_flight > 0)

    @property
    def spare_pid(self) -> int | None:
        """The current spare's process id (None without one)."""
        return self._spares.pid

    async def close(self) -> None:
        """Stop the spare (loaded runners are closed by their owners)."""
        await self._spares.close()

    def _on_request(self, delta: int) -> None:
        # A spare still importing must not compete with llama.cpp's threads for the CPUs.
        before, self._in_flight = self._in_flight, self._in_flight + delta
        if before == 0 and self._in_flight > 0:
            self._spares.pause()
        elif before > 0 and self._in_flight == 0:
            self._spares.resume()

    async def _spawn(self, args: list[str] | None = None) -> ProcessRunner:
        """A runner process: with ``args`` it loads that model at once, without it is a spare.

        Both set their own parent-death signal (engine/control.py ``die_with_parent``) from the
        ``--parent-pid`` they are given: no ``preexec_fn``, which is unsafe beside threads.
        """
        command = (["-m", "llmhost.engine.runner", *args] if args is not None
                   else ["-m", "llmhost.engine.spare", "--parent-pid", str(os.getpid())])
        proc = await asyncio.create_subprocess_exec(
            sys.executable, *command,
            stdin=asyncio.subprocess.DEVNULL if args is not None else asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,  # control lines (engine/control.py)
            stderr=asyncio.subprocess.PIPE,
            env=_runner_env(),
        )
        return ProcessRunner(proc, self._on_request)

    def _args(self, spec: LoadSpec, socket_path: Path, placement: Placement, host_cache: int = 0) -> list[str]:
        args = [
            "--parent-pid", str(os.getpid()),
            "--model", str(spec.model_path),
            "--socket", str(socket_path),
            "--ctx-size", str(spec.num_ctx),
            "--parallel", str(spec.parallel),
            "--batch", str(runner_batch(spec)),
            "--threads", str(spec.threads),
            "--gpu-layers", str(placement.gpu_layers),
            "--main-gpu", str(spec.main_gpu),
            "--kv-cache-type", spec.kv_cache_type,
            "--cpu-repack", spec.cpu_repack,
            "--flash-attn", spec.flash_attention,
            "--kv-host-cache", str(host_cache),
        ]
        if not spec.use_mmap:
            args.append("--no-mmap")
        if spec.projector is not None:
            args += ["--mmproj", str(spec.projector)]
        if spec.rpc_servers:
            args += ["--rpc", ",".join(spec.rpc_servers), "--rpc-layers", ",".join(map(str, placement.rpc_layers))]
        if self._debug:
            args.append("--verbose")  # llama.cpp's own log, into the daemon's log
        return args

    def _placement(self, spec: LoadSpec) -> Placement:
        """Layers on RPC workers as their memory allows, else on the GPU (blocking: asks them)."""
        if spec.rpc_servers:
            from llmhost.daemon.workers import place_on_workers

            return place_on_workers(spec)
        return self._place(spec)

    async def start(self, spec: LoadSpec) -> ProcessRunner:
        self._socket_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._counter += 1
        socket_path = self._socket_dir / f"runner-{os.getpid()}-{self._counter}.sock"
        started = time.monotonic()
        placement = await asyncio.to_thread(self._placement, spec)
        host_cache = await asyncio.to_thread(_host_cache_bytes, spec)
        args = self._args(spec, socket_path, placement, host_cache)
        runner = await self._spares.take()
        warm = runner is not None
        if runner is None:
            runner = await self._spawn(args)
        runner.hand_over(spec, args, socket_path)
        self._spares.replenish()  # after the hand-over: starting a process blocks the loop a few ms
        try:
            health = await asyncio.wait_for(runner.wait_ready(), self._load_timeout)
        except asyncio.TimeoutError:
            await runner.close()
            raise RunnerError(f"timed out after {self._load_timeout:.0f}s waiting for the model to load") from None
        except BaseException:
            await runner.close()
            raise
        log.debug("runner %d ready in %.3fs (%s; phases %s)", runner.pid, time.monotonic() - started,
                  "warm spare" if warm else "new process", health.get("load_seconds"))
        runner.vram_bytes, runner.rpc = placement.vram_bytes, placement.rpc
        runner.host_cache_bytes = host_cache
        runner.watch(self._health_interval, self._health_misses)
        return runner


class _Spares:
    """Keeps one runner process imported and waiting for a model: the spare.

    A new spare is started as soon as the last one is taken, so it imports while that model
    loads; it is paused (SIGSTOP) while any runner serves requests and resumed when none does,
    because its imports, even at idle priority, slowed a concurrent prompt evaluation from ~30 to
    ~70 ms on 2 CPUs. An idle spare holds ~60 MiB resident (~38 MiB of it private); it is not part
    of any model's size. One that dies is replaced, unless spares keep dying before they finish
    importing (a broken install): then loads start their own process, as without a spare.
    """

    MAX_FAILURES = 3
    GRACE = 0.25  # seconds a load waits for a spare to finish importing (it takes ~0.3 s)

    def __init__(self, spawn: Callable[[], Awaitable[ProcessRunner]]):
        self._spawn = spawn
        self._enabled = False
        self._paused = False
        self._spare: ProcessRunner | None = None
        self._starting: asyncio.Task[None] | None = None
        self._failures = 0
        self._tasks = Tasks()
        self._closed = False

    @property
    def pid(self) -> int | None:
        return self._spare.pid if self._spare is not None else None

    def enable(self, paused: bool) -> None:
        self._enabled, self._paused = True, paused
        self.replenish()

    def replenish(self) -> None:
        """Start a spare unless there is one (or one is starting)."""
        if self._enabled and not self._closed and self._spare is None and self._starting is None:
            self._starting = self._tasks.spawn(self._start(), "start a spare runner")

    async def _start(self) -> None:
        try:
            spare = await self._spawn()
        except OSError as e:
            log.warning("cannot start a spare runner: %s", e)
            return
        finally:
            self._starting = None
        if self._closed:
            await spare.close()
            return
        self._spare = spare
        if self._paused:
            spare.pause()
        self._tasks.spawn(self._watch(spare), f"watch spare runner {spare.pid}")

    async def _watch(self, spare: ProcessRunner) -> None:
        status = await spare.wait_exited()
        if self._spare is not spare:
            return  # taken (its exit is the loaded runner's business) or closed
        self._spare = None
        await spare.stderr_drained()
        if spare.announcement is None:
            self._failures += 1
        log.warning("spare runner %d exited (status %s): %s", spare.pid, status, spare.failure_reason())
        await spare.close()
        if self._failures < self.MAX_FAILURES:
            asyncio.get_running_loop().call_later(self._failures, self.replenish)
        else:
            log.warning("not keeping a spare runner: %d in a row failed to start", self._failures)

    def pause(self) -> None:
        self._paused = True
        if self._spare is not None and self._spare.announcement is None:
            self._spare.pause()

    def resume(self) -> None:
        self._paused = False
        if self._spare is not None:
            self._spare.resume()

    async def take(self) -> ProcessRunner | None:
        """The spare, if it has imported everything and its code is still what is on disk.

        One still importing gets ``GRACE`` seconds (resumed meanwhile: this load needs it): on an
        idle machine that is all it lacks. Not longer: it imports at idle priority, so on a busy
        machine a new process at normal priority is the faster way.
        """
        spare = self._spare
        if spare is None:
            return None
        if spare.announcement is None:
            spare.resume()
            await spare.wait_announced(self.GRACE)
            if spare.announcement is None or self._spare is not spare:
                if self._paused and self._spare is spare:
                    spare.pause()
                return None
        self._spare = None
        self._failures = 0
        if spare.alive and _unchanged(spare.announcement):
            return spare
        log.info("spare runner %d is gone or runs code that changed on disk; not using it", spare.pid)
        self._tasks.spawn(spare.close(), f"close spare runner {spare.pid}")
        return None

    async def close(self) -> None:
        self._closed = True
        await self._tasks.aclose()
        spare, self._spare = self._spare, None
        if spare is not None:
            await spare.close()


def _host_cache_bytes(spec: LoadSpec) -> int:
    from llmhost.daemon.memory import host_cache_bytes  # it imports this module

    return host_cache_bytes(spec)
