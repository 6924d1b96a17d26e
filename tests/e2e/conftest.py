"""A real daemon process (real runners, real models) in a temporary store, and the real `llm` CLI."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest

from tests.support import daemon_process
from tests.support.daemon_process import LiveDaemon, free_port, stop_daemon

__all__ = ["LiveDaemon", "free_port", "start_daemon", "stop_daemon"]

# Small enough for a 2-core machine, big enough for the real models' answers.
SETTINGS = {"LLMHOST_NUM_THREADS": "2", "LLMHOST_NUM_PARALLEL": "2", "LLMHOST_CONTEXT_LENGTH": "2048"}


def start_daemon(workdir: Path, **env: str) -> LiveDaemon:
    """``daemon_process.start_daemon`` with these tests' SETTINGS, then ``env``."""
    return daemon_process.start_daemon(workdir, {**SETTINGS, **env})


@pytest.fixture
def closing():
    """``closing(client)``: ``client`` (an official SDK's sync client), closed after the test."""
    with contextlib.ExitStack() as stack:

        def keep(client):
            stack.callback(client.close)
            return client

        yield keep


@pytest.fixture
def live_daemon(tmp_path):
    daemon = start_daemon(tmp_path / "d")
    yield daemon
    stop_daemon(daemon)
