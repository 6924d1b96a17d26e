"""A real daemon process (real runners, real models) in a temporary store, and the real `llm` CLI."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class LiveDaemon:
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
        pids = []
        try:
            children = [int(p) for p in path.read_text().split()]
        except FileNotFoundError:
            return []
        for pid in children:
            try:
                if Path(f"/proc/{pid}/comm").read_text().strip() in wanted:
                    pids.append(pid)
            except FileNotFoundError:
                continue
        return pids

    def log(self) -> str:
        return (self.workdir / "daemon.log").read_text(errors="replace")


def start_daemon(workdir: Path, **env_overrides: str) -> LiveDaemon:
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = dict(os.environ)
    env.update({
        "LLMHOST_HOST": f"127.0.0.1:{port}",
        "LLMHOST_MODELS": str(workdir / "models"),
        "LLMHOST_SOCKET": str(workdir / "llmhost.sock"),
        "LLMHOST_NUM_THREADS": "2",
        "LLMHOST_NUM_PARALLEL": "2",
        "LLMHOST_CONTEXT_LENGTH": "2048",
    })
    env.update(env_overrides)
    log = open(workdir / "daemon.log", "ab")
    proc = subprocess.Popen([sys.executable, "-m", "llmhost.daemon"], env=env, stdout=log, stderr=log)
    log.close()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"daemon exited with {proc.returncode}: {(workdir / 'daemon.log').read_text()}")
        try:
            urllib.request.urlopen(url + "/", timeout=1).read()
            return LiveDaemon(url, env, proc, workdir)
        except urllib.error.HTTPError:  # it answers (401: LLMHOST_API_KEY is set)
            return LiveDaemon(url, env, proc, workdir)
        except OSError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("daemon did not answer within 30s")
        time.sleep(0.1)


def stop_daemon(daemon: LiveDaemon) -> None:
    if daemon.proc.poll() is None:
        daemon.proc.terminate()
        try:
            daemon.proc.wait(20)
        except subprocess.TimeoutExpired:
            daemon.proc.kill()
            daemon.proc.wait()


@pytest.fixture
def live_daemon(tmp_path):
    daemon = start_daemon(tmp_path / "d")
    yield daemon
    stop_daemon(daemon)
