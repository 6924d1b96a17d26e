from __future__ import annotations

from pathlib import Path

import pytest
from huggingface_hub import constants

from llmhost.registry.store import Store

from .fake_hf import start_hub
from .helpers import write_tiny_gguf


@pytest.fixture(scope="session")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small valid GGUF shared by the session (read-only)."""
    return write_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf")


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "models")


@pytest.fixture
async def hub(monkeypatch, tmp_path):
    """The fake Hub, with huggingface_hub pointed at it and no token from the environment or disk."""
    fake, runner = await start_hub()
    monkeypatch.setenv("HF_ENDPOINT", fake.url)
    # huggingface_hub reads HF_ENDPOINT once, at import, into these two
    monkeypatch.setattr(constants, "ENDPOINT", fake.url)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", fake.url + "/{repo_id}/resolve/{revision}/{filename}")
    for variable in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    monkeypatch.setattr(constants, "AGENT_HARNESSES_PATH", str(tmp_path / "agent-harnesses.json"))
    yield fake
    await runner.cleanup()
