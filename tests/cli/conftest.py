"""Fixtures: a fake daemon on a short unix-socket path, and a CLI runner pointed at it."""

from __future__ import annotations

import socket
import tempfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from llmhost.cli.app import app
from tests.cli.fake_daemon import FakeDaemon


def closed_port() -> int:
    """A TCP port nothing listens on (so the client's TCP fallback is refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def short_dir():
    """A directory whose paths fit a unix socket (pytest's tmp_path can be too long)."""
    with tempfile.TemporaryDirectory(prefix="llmh-") as path:
        yield Path(path)


@pytest.fixture
def env(short_dir, monkeypatch, tmp_path):
    """LLMHOST_* pointing at a socket in ``short_dir`` and a TCP port that refuses."""
    monkeypatch.setenv("LLMHOST_SOCKET", str(short_dir / "llmhost.sock"))
    monkeypatch.setenv("LLMHOST_HOST", f"127.0.0.1:{closed_port()}")
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))  # where a started daemon logs
    return short_dir / "llmhost.sock"


@pytest.fixture
def daemon(env):
    fake = FakeDaemon(str(env)).start()
    yield fake
    fake.stop()


class Cli:
    """Runs ``llm ARGS`` in-process; never starts a real daemon."""

    def __init__(self):
        self.runner = CliRunner()

    def __call__(self, *args: str, input: str | None = None):
        return self.runner.invoke(app, ["--no-autostart", *args], input=input)


@pytest.fixture
def llm() -> Cli:
    return Cli()
