"""Shared fixtures: a clean environment for every test, and the real test models (tests/support/models.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.support import models

# Variables the code under test reads (llmhost's own, Ollama's, Hugging Face's). A test sets what it
# needs; nothing leaks in from the shell that runs the suite (a developer's LLMHOST_HOST or HF_TOKEN).
CLEARED_PREFIXES = ("LLMHOST_", "OLLAMA_", "HF_", "HUGGINGFACE_")
KEPT = {models.REQUIRE_VARIABLE, models.MODELS_VARIABLE}  # the suite's own switches, not the code's
ENVIRONMENT = pytest.StashKey[pytest.MonkeyPatch]()
REAL_MODEL_FIXTURES = {"smollm2_path", "gemma3_path"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test that reaches a real model (directly or through another fixture) is marked ``model``,
    so ``-m "not model"`` runs exactly what needs no download."""
    for item in items:
        if REAL_MODEL_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.model)


def _clear(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith(CLEARED_PREFIXES) and name not in KEPT:
            monkeypatch.delenv(name)


def pytest_configure(config: pytest.Config) -> None:
    """Cleared before anything is collected: libraries read some at import (huggingface_hub's HF_*)."""
    config.stash[ENVIRONMENT] = monkeypatch = pytest.MonkeyPatch()
    _clear(monkeypatch)


def pytest_unconfigure(config: pytest.Config) -> None:
    config.stash[ENVIRONMENT].undo()


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Cleared again for each test: what one test set (even without monkeypatch) never reaches the next."""
    _clear(monkeypatch)


@pytest.fixture(scope="session")
def smollm2_path() -> Path:
    return models.smollm2_path()


@pytest.fixture(scope="session")
def gemma3_path() -> Path:
    return models.gemma3_path()
