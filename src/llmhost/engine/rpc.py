"""llama.cpp's RPC backend (ggml-rpc) through ctypes: the only module that touches it.

A worker (``llm worker``) runs ggml's RPC server, which lends this machine's devices (its GPUs, else
its CPU and memory) to one remote process at a time. A runner started with ``--rpc`` adds each
worker's devices to its model (``llama_model_params.devices``) and llama.cpp places layers on them
as it places them on local GPUs. The protocol has no authentication: whoever reaches a worker's port
can allocate its memory, read what it holds and run computations on it.

Entry points (``ggml/include/ggml-rpc.h`` of the llama.cpp vendored by llama-cpp-python 0.3.36, RPC
protocol 7.0.0), found through the backend registry as llama-server and rpc-server find them:

    ggml_backend_reg_by_name("RPC")                   the backend is built in (llama_supports_rpc)
    ggml_backend_reg_get_proc_address(reg, name) →
      ggml_backend_rpc_add_server(endpoint) → reg     a worker's devices (connects and says hello)
      ggml_backend_rpc_start_server(endpoint, cache_dir, n_threads, n_devices, devices)   serves, never returns
    ggml_backend_reg_dev_count/_dev_get, ggml_backend_dev_memory   a worker's devices and their free memory
    ggml_set_abort_callback                           names the lost worker before ggml aborts

ggml aborts the whole process when a worker cannot be reached or goes away mid-computation. So the
daemon asks workers only through a child process (``python -m llmhost.engine.rpc probe``), every
address is first tried with a plain TCP connection (the error then names the worker), and a runner
that loses one says which on its way down (its ``error:`` line is what the daemon reports).

Importing this module loads nothing: the library is opened on first use (``libggml`` only, ~0.1 s,
not llama_cpp's Python bindings).
"""

from __future__ import annotations

import ctypes
import importlib.util
import json
import os
import socket
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MAX_SERVERS = 16  # GGML_RPC_MAX_SERVERS, and llama_max_devices(): the length of tensor_split
CONNECT_TIMEOUT = 3.0  # seconds a TCP connection to a worker may take before it counts as not there
_CPU, _ACCEL = 0, 3  # enum ggml_backend_dev_type

_ADD_SERVER = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_char_p)
_START_SERVER = ctypes.CFUNCTYPE(None, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_size_t,
                                 ctypes.POINTER(ctypes.c_void_p))
_GET_NAME = ctypes.CFUNCTYPE(ctypes.c_char_p, ctypes.c_void_p)
_GET_MEMORY = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.POINTER(ctypes.c_size_t), ctypes.POINTER(ctypes.c_size_t))
_ABORT_CALLBACK = ctypes.CFUNCTYPE(None, ctypes.c_char_p)
_keep: list[Any] = []  # callbacks C holds pointers to: alive as long as the process


class RpcError(Exception):
    """A worker cannot be used, or this build has no RPC backend; the message is meant for the user."""


@dataclass(frozen=True)
class RpcDevice:
    """One device a worker lends (most workers lend one), with its memory as the worker reports it."""

    server: str  # host:port
    index: int  # the device's index on its worker
    free: int
    total: int
    handle: int = 0  # ggml_backend_dev_t in this process (0 in the probe's answer)

    def as_json(self) -> dict[str, Any]:
        return {"server": self.server, "index": self.index, "free": self.free, "total": self.total}


# --- addresses ---------------------------------------------------------------------------------


def split_endpoint(text: str) -> tuple[str, int]:
    """``host:port`` → (host, port); ValueError for anything ggml's parser would not take (it splits
    at the first colon, so IPv6 literals cannot be used)."""
    host, sep, port = text.strip().partition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{text.strip()!r} is not host:port")
    if ":" in host or any(c.isspace() for c in host):
        raise ValueError(f"{text.strip()!r} is not host:port (IPv6 addresses cannot be used: give a host name)")
    return host, int(port)


def parse_servers(text: str) -> tuple[str, ...]:
    """``host:port,host:port`` → the addresses, each checked and in order; empty text: none.
    A worker listed twice is a ValueError (llama.cpp would give the one device two shares)."""
    servers = tuple(":".join(map(str, split_endpoint(part))) for part in text.split(",") if part.strip())
    if len(set(servers)) != len(servers):
        raise ValueError("a worker is listed twice")
    if len(servers) > MAX_SERVERS:
        raise ValueError(f"at most {MAX_SERVERS} workers")
    return servers


def check_reachable(server: str, timeout: float = CONNECT_TIMEOUT) -> None:
    """RpcError naming ``server`` unless something accepts a TCP connection there."""
    host, port = split_endpoint(server)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as e:
        reason = e.strerror or str(e) or type(e).__name__
        raise RpcError(f"RPC worker {server} is not reachable ({reason.lower()}): start it there with "
                       f"`llm worker --host {host} --port {port}`") from None


# --- the library ---------------------------------------------------------------------------------


def rebuild_hint() -> str:
    """How to get a llama-cpp-python with the RPC backend, as one sentence."""
    try:
        from importlib.metadata import version

        pin = f"=={version('llama-cpp-python')}"
    except Exception:  # a hint without the version is still a hint
        pin = ""
    return ("rebuild it with scripts/setup, or: CMAKE_ARGS=-DGGML_RPC=ON pip install --force-reinstall --no-deps "
            f"--no-cache-dir --no-binary llama-cpp-python llama-cpp-python{pin}")


def _library_path() -> Path:
    spec = importlib.util.find_spec("llama_cpp")  # finds the package without importing it
    if spec is None or spec.origin is None:
        raise RpcError("llama-cpp-python is not installed")
    lib = Path(spec.origin).parent / "lib"
    for name in ("libggml.so", "libggml.dylib", "ggml.dll"):
        if (lib / name).exists():
            return lib / name
    raise RpcError(f"no libggml in {lib}: is llama-cpp-python installed completely?")


_lock = threading.Lock()
_lib: ctypes.CDLL | None = None


def _ggml() -> ctypes.CDLL:
    """libggml (the one llama_cpp loaded, when it did) with the prototypes used here."""
    global _lib
    with _lock:
        if _lib is None:
            _lib = _declare(ctypes.CDLL(str(_library_path())))
        return _lib


def _declare(lib: ctypes.CDLL) -> ctypes.CDLL:
    vp, size = ctypes.c_void_p, ctypes.c_size_t
    for name, args, result in (
        ("ggml_backend_reg_count", [], size),
        ("ggml_backend_load_all", [], None),
        ("ggml_backend_reg_by_name", [ctypes.c_char_p], vp),
        ("ggml_backend_reg_get_proc_address", [vp, ctypes.c_char_p], vp),
        ("ggml_backend_reg_dev_count", [vp], size),
        ("ggml_backend_reg_dev_get", [vp, size], vp),
        ("ggml_backend_dev_count", [], size),
        ("ggml_backend_dev_get", [size], vp),
        ("ggml_backend_dev_by_type", [ctypes.c_int], vp),
        ("ggml_backend_dev_type", [vp], ctypes.c_int),
        ("ggml_backend_dev_name", [vp], ctypes.c_char_p),
        ("ggml_backend_dev_memory", [vp, ctypes.POINTER(size), ctypes.POINTER(size)], None),
        ("ggml_set_abort_callback", [_ABORT_CALLBACK], vp),
    ):
        fn = getattr(lib, name)
        fn.argtypes, fn.restype = args, result
    return lib


def _rpc_backend(lib: ctypes.CDLL) -> int:
    if not lib.ggml_backend_reg_count():
        lib.ggml_backend_load_all()  # a build with backends as loadable modules
    reg = lib.ggml_backend_reg_by_name(b"RPC")
    if not reg:
        raise RpcError(f"this llama-cpp-python was built without llama.cpp's RPC backend: {rebuild_hint()}")
    return int(reg)


def _function(lib: ctypes.CDLL, prototype: Any, name: str) -> Any:
    address = lib.ggml_backend_reg_get_proc_address(_rpc_backend(lib), name.encode())
    if not address:
        raise RpcError(f"llama.cpp's RPC backend has no {name}: {rebuild_hint()}")
    return prototype(address)


def require_rpc() -> None:
    """RpcError saying how to rebuild unless the installed llama.cpp has the RPC backend."""
    _rpc_backend(_ggml())


def supports_rpc() -> bool:
    """Whether the installed llama.cpp has the RPC backend (what ``llama_supports_rpc`` says)."""
    try:
        require_rpc()
    except RpcError:
        return False
    return True


def _memory(lib: ctypes.CDLL, device: int) -> tuple[int, int]:
    free, total = ctypes.c_size_t(), ctypes.c_size_t()
    lib.ggml_backend_dev_memory(device, ctypes.byref(free), ctypes.byref(total))
    return free.value, total.value


def _worker_devices(lib: ctypes.CDLL, server: str) -> list[RpcDevice]:
    """Connect to ``server`` and list its devices (ggml aborts if it is gone: check it first)."""
    reg = _function(lib, _ADD_SERVER, "ggml_backend_rpc_add_server")(server.encode())
    if not reg:
        raise RpcError(f"RPC worker {server} lends no device")
    devices = []
    for index in range(lib.ggml_backend_reg_dev_count(reg)):
        handle = lib.ggml_backend_reg_dev_get(reg, index)
        free, total = _memory(lib, handle)
        devices.append(RpcDevice(server, index, free, total, int(handle)))
    return devices


# --- a runner's side ---------------------------------------------------------------------------


def attach(servers: Sequence[str], timeout: float = 30.0) -> list[RpcDevice]:
    """The devices of every worker in ``servers``, in order, for ``llama_model_params.devices``.

    RpcError naming the worker when one is not there. From here on, losing a worker aborts the process
    with an ``error:`` line that names it. A worker that accepts the connection but never answers
    (one serves a single client at a time) ends the process after ``timeout`` seconds with such a line.
    """
    lib = _ggml()
    _rpc_backend(lib)
    for server in servers:
        check_reachable(server)
    _report_lost_workers(lib, servers)
    devices: list[RpcDevice] = []
    for server in servers:
        with _Deadline(timeout, f"RPC worker {server} accepted the connection but did not answer within "
                                f"{timeout:.0f} s (a worker serves one runner at a time: is another using it?)"):
            devices += _worker_devices(lib, server)
    return devices


class _Deadline:
    """Ends the process with ``message`` as its ``error:`` line unless the block is over in time
    (a call into C cannot be interrupted)."""

    def __init__(self, seconds: float, message: str):
        self._timer = threading.Timer(seconds, _die, (message,))
        self._timer.daemon = True

    def __enter__(self) -> None:
        self._timer.start()

    def __exit__(self, *exc_info: object) -> None:
        self._timer.cancel()


def _die(message: str) -> None:
    os.write(2, f"error: {message}\n".encode())
    os._exit(1)


def _report_lost_workers(lib: ctypes.CDLL, servers: Sequence[str]) -> None:
    """Before ggml aborts (a worker refused the handshake or went away), write an ``error:`` line that
    names the workers that no longer answer (all of them when each still accepts connections); any
    other of ggml's fatal errors gets its own line."""

    def on_abort(raw: bytes | None) -> None:
        where, _, detail = (raw or b"").decode(errors="replace").partition(": ")
        gone = _gone(servers)
        if not gone and "ggml-rpc" not in where:  # another of llama.cpp's fatal errors
            os.write(2, f"error: llama.cpp aborted: {detail.strip()} ({where.rsplit('/', 1)[-1]})\n".encode())
            return
        os.write(2, (f"error: lost RPC worker {', '.join(gone or servers)} ({detail.strip()}); the model is loaded "
                     "again on the next request, once the worker is back\n").encode())

    callback = _ABORT_CALLBACK(on_abort)
    _keep.append(callback)
    lib.ggml_set_abort_callback(callback)


def _gone(servers: Sequence[str], waits: Sequence[float] = (0.2, 0.5)) -> list[str]:
    """The workers that refuse connections, asked after each wait (a worker killed a moment ago may
    still be closing its listening socket), else those that did not answer in time. A worker still
    serving this runner queues the connections instead of accepting them, and ggml's server queues
    at most two: hence two rounds, not more."""
    silent: set[str] = set()
    for wait in waits:
        time.sleep(wait)
        answers = {server: _accepts(server) for server in servers}
        gone = [server for server, answer in answers.items() if answer is False]
        if gone:
            return gone
        silent |= {server for server, answer in answers.items() if answer is None}
    return [server for server in servers if server in silent]


def _accepts(server: str) -> bool | None:
    """True: it accepts a connection; False: refused (nothing listens); None: no answer in time."""
    host, port = split_endpoint(server)
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except TimeoutError:
        return None
    except OSError:
        return False


# --- the daemon's question, asked in a child process -------------------------------------------------


def probe(servers: Sequence[str], emit: Callable[[dict[str, Any]], None]) -> None:
    """``emit`` each worker's devices as ``{"server", "devices": [...]}``, worker by worker (so a
    worker that does not answer is the one after the last line); RpcError for one that is not there."""
    lib = _ggml()
    _rpc_backend(lib)
    for server in servers:
        check_reachable(server)
    asking = [""]

    def on_abort(raw: bytes | None) -> None:  # e.g. a worker of another protocol version
        detail = (raw or b"").decode(errors="replace").split(": ", 1)[-1].strip()
        emit({"error": f"RPC worker {asking[0]} failed: {detail} (is it the same llmhost and llama.cpp version?)"})

    callback = _ABORT_CALLBACK(on_abort)
    _keep.append(callback)
    lib.ggml_set_abort_callback(callback)
    for server in servers:
        asking[0] = server
        emit({"server": server, "devices": [d.as_json() for d in _worker_devices(lib, server)]})


def _probe_main(servers: list[str]) -> int:
    def emit(line: dict[str, Any]) -> None:
        print(json.dumps(line), flush=True)

    try:
        probe(parse_servers(",".join(servers)), emit)
    except (RpcError, ValueError) as e:
        emit({"error": str(e)})
        return 1
    return 0


# --- a worker's side ---------------------------------------------------------------------------------


def serve(host: str, port: int, *, threads: int, mem_bytes: int | None = None) -> None:
    """Serve this machine's devices (its GPUs, else its CPU) to RPC clients; returns only when the
    server could not start. ``mem_bytes`` caps the memory each device reports (the daemon places
    layers by it); a CPU reports what the kernel calls available, not all of RAM."""
    lib = _ggml()
    start = _function(lib, _START_SERVER, "ggml_backend_rpc_start_server")
    devices = _local_devices(lib)
    for device in devices:
        _cap_memory(lib, device, mem_bytes)
    _check_port(host, port)
    array = (ctypes.c_void_p * len(devices))(*devices)
    start(f"{host}:{port}".encode(), None, threads, len(devices), array)  # no tensor cache directory
    raise RpcError(f"the RPC server on {host}:{port} stopped (see the lines above)")


def _local_devices(lib: ctypes.CDLL) -> list[int]:
    """As rpc-server chooses: every GPU, else the CPU."""
    _rpc_backend(lib)
    found = [lib.ggml_backend_dev_get(i) for i in range(lib.ggml_backend_dev_count())]
    gpus = [int(d) for d in found if lib.ggml_backend_dev_type(d) not in (_CPU, _ACCEL)]
    cpu = lib.ggml_backend_dev_by_type(_CPU)
    return gpus or ([int(cpu)] if cpu else [])


def _check_port(host: str, port: int) -> None:
    """RpcError now, in words, where ggml would only say it failed to create the server socket."""
    try:
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((host, port))
    except OSError as e:
        raise RpcError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None


def _cap_memory(lib: ctypes.CDLL, device: int, limit: int | None) -> None:
    """Make ``device`` report at most ``limit`` bytes (and a CPU its available memory: ggml's CPU device
    reports all of RAM as free), by replacing ``get_memory`` in its interface.

    ``struct ggml_backend_device`` starts with its function table (``get_name``, ``get_description``,
    ``get_memory``, …, ggml-backend-impl.h); the table is checked against the public calls before
    anything is written, so another layout is an error rather than a crash.
    """
    table = ctypes.cast(device, ctypes.POINTER(ctypes.c_void_p))
    original = _GET_MEMORY(table[2])
    if _GET_NAME(table[0])(device) != lib.ggml_backend_dev_name(device) or _call(original, device)[1] != _memory(
            lib, device)[1]:
        raise RpcError("this llama.cpp's device layout is not the one llmhost knows: --mem cannot be applied")
    is_cpu = lib.ggml_backend_dev_type(device) == _CPU

    def get_memory(dev: int, free: Any, total: Any) -> None:
        original(dev, free, total)
        if is_cpu:
            free[0] = min(free[0], _mem_available() or free[0])
        if limit is not None:
            free[0], total[0] = min(free[0], limit), min(total[0], limit)

    callback = _GET_MEMORY(get_memory)
    _keep.append(callback)
    table[2] = ctypes.cast(callback, ctypes.c_void_p).value


def _call(get_memory: Any, device: int) -> tuple[int, int]:
    free, total = ctypes.c_size_t(), ctypes.c_size_t()
    get_memory(device, ctypes.byref(free), ctypes.byref(total))
    return free.value, total.value


def _mem_available() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _check_main() -> int:
    try:
        require_rpc()
    except RpcError as e:
        print(e, flush=True)
        return 1
    return 0


if __name__ == "__main__":  # python -m llmhost.engine.rpc {check | probe HOST:PORT...}
    if sys.argv[1:] == ["check"]:
        sys.exit(_check_main())
    if sys.argv[1:2] != ["probe"]:
        sys.exit("usage: python -m llmhost.engine.rpc {check | probe HOST:PORT...}")
    sys.exit(_probe_main(sys.argv[2:]))
