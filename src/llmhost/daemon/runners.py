"""The daemon's side of the runner seam: a runner process reached over its private unix socket.

The daemon sees a loaded model only through ``Runner`` (and starts one through ``RunnerFactory``),
so tests plug in a fake runner with canned answers. ``ProcessRunner`` is the real one: it spawns
``python -m llmhost.engine.runner``, waits until the socket answers ``/health``, and notices when the
process dies (a llama.cpp abort or segfault must never take the daemon down).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ctypes
import json
import logging
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import AsyncIterator, Callable, Protocol

from llmhost.errors import BadRequest, LlmhostError, RunnerError

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
    use_mmap: bool = True

    def covers(self, other: "LoadSpec") -> bool:
        """True when a runner started with ``self`` can serve a request that asks for ``other``."""
        return (
            self.key == other.key
            and self.num_ctx >= other.num_ctx
            and self.num_batch == other.num_batch
            and self.num_gpu == other.num_gpu
            and self.use_mmap == other.use_mmap
            and self.threads == other.threads
        )


class Runner(Protocol):
    """A loaded model, as the daemon sees it."""

    spec: LoadSpec
    memory_bytes: int

    def completion(self, body: dict) -> AsyncIterator[dict]:
        """Stream runner-protocol lines (``{"content"}``…, then a final ``{"done": true, …}``)."""

    async def embed(self, body: dict) -> dict:
        """Embeddings for ``{"input": [...], "truncate": bool}``."""

    async def close(self) -> None:
        """Stop the runner and give its memory back."""

    async def wait_exited(self) -> int:
        """Return when the runner is gone (exit status)."""


class RunnerFactory(Protocol):
    async def start(self, spec: LoadSpec) -> Runner:
        """Start a runner and return once it is ready; RunnerError with the reason otherwise."""


def _set_parent_death_signal() -> None:
    """In the child: get SIGTERM if the daemon dies, so a killed daemon leaves no orphan runner."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class ProcessRunner:
    """A runner child process; requests go over HTTP on its unix socket."""

    def __init__(self, spec: LoadSpec, proc: asyncio.subprocess.Process, socket_path: Path):
        self.spec = spec
        self.memory_bytes = 0
        self._proc = proc
        self._socket_path = socket_path
        self._stderr_tail: collections.deque[str] = collections.deque(maxlen=40)
        self._stderr_task = asyncio.create_task(self._drain_stderr())
        self._session = None
        self._watchdog: asyncio.Task | None = None

    def watch(self, interval: float, misses: int) -> None:
        """Kill the runner if it stops answering ``/health`` (``misses`` times in a row).

        A hung process (stopped, deadlocked in llama.cpp) never exits by itself; killing it lets
        supervision end its requests with an error and reload the model on the next one.
        """
        self._watchdog = asyncio.create_task(self._watch_health(interval, misses))

    async def _watch_health(self, interval: float, misses: int) -> None:
        import aiohttp

        missed = 0
        while self.alive:
            await asyncio.sleep(interval)
            try:
                await asyncio.wait_for(self.health(), interval)
                missed = 0
            except (asyncio.TimeoutError, aiohttp.ClientError, ConnectionError, OSError):
                missed += 1
                if missed >= misses and self.alive:
                    log.warning("runner %d stopped answering; killing it", self.pid)
                    with contextlib.suppress(ProcessLookupError):
                        self._proc.kill()

    @property
    def pid(self) -> int:
        return self._proc.pid

    @property
    def alive(self) -> bool:
        return self._proc.returncode is None

    async def _drain_stderr(self) -> None:
        # llama.cpp logs a lot; an undrained pipe would block the runner.
        assert self._proc.stderr is not None
        async for raw in self._proc.stderr:
            line = raw.decode(errors="replace").rstrip()
            self._stderr_tail.append(line)
            log.debug("runner %d: %s", self._proc.pid, line)

    async def stderr_drained(self) -> None:
        """Wait (briefly) until everything the process wrote to stderr has been read."""
        with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
            await asyncio.wait_for(asyncio.shield(self._stderr_task), 2)

    def failure_reason(self) -> str:
        """The runner's own ``error:`` line if it printed one, else its exit status."""
        for line in reversed(self._stderr_tail):
            if line.startswith("error: "):
                return line[len("error: "):]
        code = self._proc.returncode
        if code is not None and code < 0:
            return f"model runner crashed (signal {-code}); see the daemon log with LLMHOST_DEBUG=1"
        return f"model runner exited with status {code}"

    def _http(self):
        import aiohttp

        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.UnixConnector(path=str(self._socket_path)),
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
            )
        return self._session

    async def health(self) -> dict:
        async with self._http().get("http://runner/health") as resp:
            resp.raise_for_status()
            return await resp.json()

    async def completion(self, body: dict) -> AsyncIterator[dict]:
        import aiohttp

        try:
            async with self._http().post("http://runner/completion", json=body) as resp:
                if resp.status >= 400 and resp.content_type == "application/json":
                    raise _error_from(resp.status, (await resp.json()).get("error", "runner error"))
                async for line in resp.content:
                    if line.strip():
                        yield json.loads(line)
        except (aiohttp.ClientError, ConnectionError) as e:
            await self._raise_if_dead(e)

    async def embed(self, body: dict) -> dict:
        import aiohttp

        try:
            async with self._http().post("http://runner/embed", json=body) as resp:
                data = await resp.json()
                if resp.status >= 400:
                    raise _error_from(resp.status, data.get("error", "runner error"))
                return data
        except (aiohttp.ClientError, ConnectionError) as e:
            await self._raise_if_dead(e)
            raise AssertionError("unreachable")

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
            try:
                await asyncio.wait_for(self._proc.wait(), 10)
            except asyncio.TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    self._proc.kill()
                await self._proc.wait()
        self._stderr_task.cancel()
        with contextlib.suppress(FileNotFoundError):
            self._socket_path.unlink()


def _error_from(status: int, message: str) -> LlmhostError:
    return BadRequest(message) if status == 400 else RunnerError(message)


class ProcessRunnerFactory:
    """Starts real runner processes with sockets in ``socket_dir`` (private to this daemon)."""

    def __init__(self, socket_dir: Path, load_timeout: float, debug: bool = False,
                 health_interval: float = 5.0, health_misses: int = 3,
                 auto_gpu_layers: Callable[[LoadSpec], int] = lambda spec: 0):
        self._socket_dir = socket_dir
        self._load_timeout = load_timeout
        self._debug = debug
        self._health_interval = health_interval
        self._health_misses = health_misses
        # num_gpu = -1 (auto) stays -1 in the spec, so the chosen layer count never forces a reload.
        self._auto_gpu_layers = auto_gpu_layers
        self._counter = 0

    def _command(self, spec: LoadSpec, socket_path: Path) -> list[str]:
        cmd = [
            sys.executable, "-m", "llmhost.engine.runner",
            "--model", str(spec.model_path),
            "--socket", str(socket_path),
            "--ctx-size", str(spec.num_ctx),
            "--parallel", str(spec.parallel),
            "--batch", str(spec.num_batch),
            "--threads", str(spec.threads),
            "--gpu-layers", str(spec.num_gpu if spec.num_gpu >= 0 else self._auto_gpu_layers(spec)),
        ]
        if not spec.use_mmap:
            cmd.append("--no-mmap")
        if self._debug:
            cmd.append("--verbose")  # llama.cpp's own log, into the daemon's log
        return cmd

    async def start(self, spec: LoadSpec) -> ProcessRunner:
        self._socket_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._counter += 1
        socket_path = self._socket_dir / f"runner-{os.getpid()}-{self._counter}.sock"
        proc = await asyncio.create_subprocess_exec(
            *self._command(spec, socket_path),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            preexec_fn=_set_parent_death_signal if sys.platform.startswith("linux") else None,
        )
        runner = ProcessRunner(spec, proc, socket_path)
        try:
            health = await asyncio.wait_for(self._wait_ready(runner), self._load_timeout)
        except asyncio.TimeoutError:
            await runner.close()
            raise RunnerError(f"timed out after {self._load_timeout:.0f}s waiting for the model to load") from None
        except BaseException:
            await runner.close()
            raise
        runner.memory_bytes = int(health.get("memory_bytes") or 0)
        runner.watch(self._health_interval, self._health_misses)
        return runner

    async def _wait_ready(self, runner: ProcessRunner) -> dict:
        import aiohttp

        delay = 0.02
        while True:
            if not runner.alive:
                await runner.stderr_drained()
                raise RunnerError(f"failed to load model: {runner.failure_reason()}")
            if runner._socket_path.exists():
                with contextlib.suppress(aiohttp.ClientError, ConnectionError, OSError):
                    return await runner.health()
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, 0.25)
