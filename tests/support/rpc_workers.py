"""Real ``llm worker`` processes (llama.cpp's RPC server) on loopback ports, for the RPC tests.

    skip_without_rpc()                         skip unless llama.cpp has the RPC backend (fail where required)
    with running_workers(2, mem_mib=256) as workers:
        workers[0].address                     "127.0.0.1:PORT"
        workers[0].kill()                      gone at once (SIGKILL), as a machine that drops off

Every worker gets SIGKILL on exit, so none outlives its test.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support import models
from tests.support.processes import free_port

START_TIMEOUT = 30.0


def rpc_built_by_setup() -> bool:
    """scripts/setup installed this venv's llama.cpp with the RPC backend (it leaves this marker)."""
    return (Path(sys.prefix) / ".llmhost-rpc").is_file()


def skip_without_rpc() -> None:
    """Skip unless llama.cpp has the RPC backend; fail instead where the test models are required
    (LLMHOST_REQUIRE_TEST_MODELS=1) and scripts/setup built the library, as in CI."""
    from llmhost.engine.rpc import supports_rpc

    if supports_rpc():
        return
    message = ("llama-cpp-python was built without llama.cpp's RPC backend (scripts/setup builds it with "
               "CMAKE_ARGS=-DGGML_RPC=ON)")
    if models.REQUIRED and rpc_built_by_setup():
        pytest.fail(f"{message}, although scripts/setup installed it here and {models.REQUIRE_VARIABLE}=1")
    pytest.skip(message)


@dataclass
class Worker:
    """A started ``llm worker``; its stderr (the security warning, errors) in ``log``."""

    address: str
    proc: subprocess.Popen
    log: Path

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def start_worker(log: Path, *args: str, port: int | None = None) -> Worker:
    """``llm worker --port PORT --threads 1 ARGS`` on 127.0.0.1, returned once it accepts connections."""
    port = port or free_port()
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "llmhost.cli.app", "worker", "--port", str(port),
                                 "--threads", "1", *args], stdout=out, stderr=subprocess.STDOUT)
    worker = Worker(f"127.0.0.1:{port}", proc, log)
    deadline = time.monotonic() + START_TIMEOUT
    while not _accepts(port):
        if proc.poll() is not None or time.monotonic() > deadline:
            worker.kill()
            raise RuntimeError(f"worker did not start: {worker.output()}")
        time.sleep(0.05)
    return worker


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def running_workers(count: int, directory: Path, *args: str) -> Iterator[list[Worker]]:
    workers: list[Worker] = []
    try:
        for i in range(count):
            workers.append(start_worker(directory / f"worker{i}.log", *args))
        yield workers
    finally:
        for worker in workers:
            worker.kill()
