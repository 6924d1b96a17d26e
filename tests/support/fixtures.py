"""Pytest fixtures over the helpers in this package; import them into a conftest.py:

    from tests.support.fixtures import tiny_model  # noqa: F401

The tiny models build on ``smollm2_path`` from tests/conftest.py (which skips when the real model is
missing); the fake daemon (tests/api, tests/cli) needs nothing.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

from tests.support.fake_daemon import FakeDaemon
from tests.support.processes import free_port
from tests.support.tiny_gguf import read_tokenizer, write_tiny_llama


@pytest.fixture(scope="session")
def tiny_tokenizer(smollm2_path):
    """SmolLM2's tokenizer fields, read once per session."""
    return read_tokenizer(smollm2_path)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory, tiny_tokenizer) -> Path:
    """Path of a tiny random-weight llama GGUF with SmolLM2's tokenizer and chat template."""
    path = tmp_path_factory.mktemp("models") / "tiny-llama.gguf"
    return write_tiny_llama(path, tokenizer=tiny_tokenizer)


@pytest.fixture(scope="session")
def tiny_model_no_template(tmp_path_factory, tiny_tokenizer) -> Path:
    """The tiny model without a chat template (the runner falls back to ChatML)."""
    path = tmp_path_factory.mktemp("models") / "tiny-llama-no-template.gguf"
    return write_tiny_llama(path, tokenizer=tiny_tokenizer, chat_template=None)


@pytest.fixture
def short_dir():
    """A directory whose paths fit a unix socket (pytest's tmp_path can be too long)."""
    with tempfile.TemporaryDirectory(prefix="llmh-") as path:
        yield Path(path)


@pytest.fixture
def env(short_dir, monkeypatch, tmp_path) -> Path:
    """LLMHOST_* pointing at a socket in ``short_dir`` (returned) and a TCP port that refuses."""
    monkeypatch.setenv("LLMHOST_SOCKET", str(short_dir / "llmhost.sock"))
    monkeypatch.setenv("LLMHOST_HOST", f"127.0.0.1:{free_port()}")
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))  # where a started daemon logs
    return short_dir / "llmhost.sock"


@pytest.fixture
def daemon(env):
    """A FakeDaemon on ``env``'s socket."""
    fake = FakeDaemon(str(env)).start()
    yield fake
    fake.stop()
