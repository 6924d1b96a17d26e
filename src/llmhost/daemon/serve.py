"""``llm serve``: run the daemon on the unix socket and on LLMHOST_HOST until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import shutil
import signal
import socket
from pathlib import Path
from typing import TYPE_CHECKING

from aiohttp import web

from llmhost.config import Settings
from llmhost.errors import ConfigError

if TYPE_CHECKING:  # build_state imports them when it is called
    from llmhost.daemon.runner_client import ProcessRunnerFactory
    from llmhost.daemon.state import DaemonState

log = logging.getLogger("llmhost")


def _socket_in_use(path: Path) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1)
        probe.connect(str(path))
        return True
    except OSError:
        return False
    finally:
        probe.close()


def prepare_socket(path: Path) -> None:
    """Refuse to start beside a live daemon; remove a stale socket left by a crashed one."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    if path.exists() or path.is_symlink():
        if _socket_in_use(path):
            raise ConfigError(f"llmhost is already running (socket {path} answers)")
        path.unlink()


def clean_stale_runner_dirs(base: Path) -> None:
    """Runner socket folders of daemons that no longer exist (crashed) are removed."""
    if not base.is_dir():
        return
    for entry in base.iterdir():
        pid = entry.name
        if pid.isdigit() and not _pid_alive(int(pid)):
            shutil.rmtree(entry, ignore_errors=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def build_state(settings: Settings) -> tuple[DaemonState, Path, ProcessRunnerFactory]:
    """The daemon's state (store, residency), its runner folder and its runner factory."""
    from llmhost.daemon.gpu import GpuProbe, place_for_spec
    from llmhost.daemon.memory import estimate_for_spec, host_cache_bytes
    from llmhost.daemon.residency import Residency
    from llmhost.daemon.runner_client import ProcessRunnerFactory
    from llmhost.daemon.state import DaemonState
    from llmhost.registry.store import Store

    runner_base = settings.socket.parent / "runners"
    clean_stale_runner_dirs(runner_base)
    factory = ProcessRunnerFactory(runner_base / str(os.getpid()), settings.load_timeout, settings.debug,
                                   place=functools.partial(place_for_spec, probe=GpuProbe()))
    residency = Residency(
        factory,
        max_loaded=settings.max_loaded_models,
        max_queue=settings.max_queue,
        memory_budget=settings.max_memory,
        estimate=estimate_for_spec,
        host_cache=host_cache_bytes,
    )
    store = Store(settings.models)
    store.remove_stale_temp_files()  # uploads and pulls cut short by a crash
    return DaemonState(settings=settings, store=store, residency=residency), runner_base, factory


async def run_daemon(settings: Settings, ready: asyncio.Event | None = None) -> None:
    from llmhost.daemon.app import create_app

    prepare_socket(settings.socket)
    state, runner_base, factory = build_state(settings)
    app = create_app(state, check_host=_is_loopback(settings.host))
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
    await runner.setup()
    host, port = settings.host.rsplit(":", 1)
    unix_site = web.UnixSite(runner, str(settings.socket))
    await unix_site.start()
    os.chmod(settings.socket, 0o600)
    try:
        await web.TCPSite(runner, host.strip("[]"), int(port)).start()
    except OSError as e:
        await runner.cleanup()
        raise ConfigError(f"cannot listen on {settings.host} (LLMHOST_HOST): {e.strerror or e}") from None
    log.info("llmhost listening on %s and %s", settings.host, settings.socket)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if ready is not None:
        ready.set()
    # A spare runner (runner_client._Spares) is started once the daemon answers, so its imports do not
    # slow the daemon's own start.
    if settings.spare_runner:
        factory.keep_spare()
    try:
        await stop.wait()
    finally:
        log.info("shutting down: stopping runners")
        state.shutting_down = True  # /health answers 503 to whoever still asks
        await runner.cleanup()  # on_shutdown stops every runner
        await factory.close()
        with contextlib.suppress(FileNotFoundError):
            settings.socket.unlink()
        shutil.rmtree(runner_base / str(os.getpid()), ignore_errors=True)


def _is_loopback(host: str) -> bool:
    name = host.rsplit(":", 1)[0].strip("[]")
    return name in ("127.0.0.1", "localhost", "::1") or name.startswith("127.")


def serve(settings: Settings) -> None:
    """Run the daemon in the foreground until SIGTERM or SIGINT."""
    if settings.rpc_servers:
        from llmhost.daemon.workers import check_rpc_build

        check_rpc_build()  # now, not at the first load: a rebuild is needed
    logging.basicConfig(
        level=logging.DEBUG if settings.debug else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    asyncio.run(run_daemon(settings))
