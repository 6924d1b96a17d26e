"""A real ``python -m llmhost.daemon`` in a work directory of its own: the one launcher for the
end-to-end tests (tests/e2e) and the benchmarks (benchmarks/harness.py).

    with running_daemon(tmp_path / "d", {"LLMHOST_NUM_PARALLEL": "2"}) as daemon:
        urllib.request.urlopen(daemon.url + "/api/tags")
        daemon.llm("list")

The daemon listens on 127.0.0.1 at a free port and on ``workdir/llmhost.sock``, keeps its store in
``workdir/models`` and logs to ``workdir/daemon.log``. It inherits this process's environment (the
tests' is cleared of LLMHOST_* and friends by tests/conftest.py), then ``env`` on top. It always gets
SIGTERM (then SIGKILL) when stopped, so no daemon outlives its test.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from tests.support.processes import free_port, terminate

__all__ = ["LiveDaemon", "free_port", "running_daemon", "start_daemon", "stop_daemon"]

START_TIMEOUT = 30.0
STOP_TIMEOUT = 20.0


@dataclass
class LiveDaemon:
    """A started daemon process; ``env`` is what it was started with (the CLI gets the same)."""

    url: str
    env: dict
    proc: subprocess.Popen
    workdir: Path

    def llm(self, *args: str, input: str | None = None, timeout: float = 240) -> subprocess.CompletedProcess:
        """Run the real CLI against this daemon (never autostarts another one)."""
        return subprocess.run([sys.executable, "-m", "llmhost.cli.app", "--no-autostart", *args],
                              env=self.env, input=input, capture_output=True, text=True, timeout=timeout)

    def runner_pids(self, *, spare: bool = False) -> list[int]:
        """Child runners holding a model (and, with ``spare``, the warm spare too), by process name."""
        path = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        wanted = {"llmhost-runner", "llmhost-spare"} if spare else {"llmhost-runner"}
        try:
            children = [int(p) for p in path.read_text().split()]
        except FileNotFoundError:
            return []
        pids = []
        for pid in children:
            try:
                if Path(f"/proc/{pid}/comm").read_text().strip() in wanted:
                    pids.append(pid)
            except FileNotFoundError:
                continue
        return pids

    def log(self) -> str:
        return (self.workdir / "daemon.log").read_text(errors="replace")


def start_daemon(workdir: Path, env: Mapping[str, str] | None = None) -> LiveDaemon:
    """Start a daemon in ``workdir`` (created if needed; its log is appended to, so a restart in the
    same directory keeps the first run's) and return once it answers HTTP."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    full_env = {**os.environ, "LLMHOST_HOST": f"127.0.0.1:{port}", "LLMHOST_MODELS": str(workdir / "models"),
                "LLMHOST_SOCKET": str(workdir / "llmhost.sock"), **(env or {})}
    with open(workdir / "daemon.log", "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "llmhost.daemon"], env=full_env, stdout=log, stderr=log)
    daemon = LiveDaemon(f"http://127.0.0.1:{port}", full_env, proc, workdir)
    try:
        _wait_until_it_answers(daemon)
    except BaseException:
        stop_daemon(daemon)
        raise
    return daemon


def _wait_until_it_answers(daemon: LiveDaemon) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        if daemon.proc.poll() is not None:
            raise RuntimeError(f"daemon exited with {daemon.proc.returncode}: {daemon.log()}")
        try:
            with urllib.request.urlopen(daemon.url + "/", timeout=1) as response:
                response.read()
            return
        except urllib.error.HTTPError as answer:  # it answers (401: LLMHOST_API_KEY is set)
            answer.close()
            return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"daemon did not answer within {START_TIMEOUT:.0f}s: {daemon.log()}")
        time.sleep(0.1)


def stop_daemon(daemon: LiveDaemon) -> None:
    """SIGTERM, then SIGKILL if it has not exited within STOP_TIMEOUT; reaps the process."""
    terminate(daemon.proc, STOP_TIMEOUT)


@contextlib.contextmanager
def running_daemon(workdir: Path, env: Mapping[str, str] | None = None) -> Iterator[LiveDaemon]:
    """``start_daemon`` for the ``with`` block, stopped after it however it ends."""
    daemon = start_daemon(workdir, env)
    try:
        yield daemon
    finally:
        stop_daemon(daemon)
