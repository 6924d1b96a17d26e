"""Pytest fixtures over the helpers in this package; import them into a conftest.py:

    from tests.support.fixtures import tiny_model  # noqa: F401

They build on ``smollm2_path`` from tests/conftest.py (which skips when the real model is missing).
"""

from __future__ import annotations

from pathlib import Path

import pytest

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
