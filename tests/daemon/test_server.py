"""Starting the daemon: configuration errors, stale sockets, help text."""

from __future__ import annotations

import subprocess
import sys

import pytest

from llmhost.config import Settings, describe_variables
from llmhost.errors import ConfigError


@pytest.mark.parametrize("name, value", [
    ("LLMHOST_MAX_QUEUE", "lots"),
    ("LLMHOST_KEEP_ALIVE", "5 minutes"),
    ("LLMHOST_MAX_MEMORY", "2 gigs"),
    ("LLMHOST_HOST", "127.0.0.1:99999"),
    ("LLMHOST_NUM_PARALLEL", "0"),
])
def test_malformed_variable_is_named(name, value):
    with pytest.raises(ConfigError, match=name):
        Settings.from_env({name: value})


def test_daemon_refuses_to_start_with_a_malformed_variable(tmp_path):
    env = {"LLMHOST_SOCKET": str(tmp_path / "s.sock"), "LLMHOST_MODELS": str(tmp_path / "m"),
           "LLMHOST_KEEP_ALIVE": "5 minutes", "PATH": "/usr/bin:/bin"}
    result = subprocess.run([sys.executable, "-m", "llmhost.daemon"], env=env, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 1
    assert "LLMHOST_KEEP_ALIVE" in result.stderr and "Traceback" not in result.stderr


def test_every_variable_is_described():
    text = describe_variables()
    for name in ("LLMHOST_HOST", "LLMHOST_MODELS", "LLMHOST_SOCKET", "LLMHOST_KEEP_ALIVE",
                 "LLMHOST_NUM_THREADS", "LLMHOST_MAX_MEMORY", "LLMHOST_MAX_QUEUE"):
        assert name in text


@pytest.mark.parametrize("text, seconds", [("10m", 600), ("1h30m", 5400), ("-1", float("inf")), ("45", 45)])
def test_keep_alive_default_parses_durations(text, seconds):
    assert Settings.from_env({"LLMHOST_KEEP_ALIVE": text}).keep_alive == seconds
