"""Engine test fixtures: the tiny models from tests/support, and the real ones loaded (their paths come
from tests/conftest.py, which skips when they are missing)."""

import pytest

from llmhost.engine.llamacpp import Model
from tests.support.fixtures import tiny_model, tiny_model_no_template, tiny_tokenizer  # noqa: F401


@pytest.fixture(scope="module")
def model(tiny_model):
    """The tiny model loaded once per test module."""
    m = Model(tiny_model)
    yield m
    m.close()


@pytest.fixture(scope="module")
def smollm2_model(smollm2_path):
    """SmolLM2-135M-Instruct loaded once per test module."""
    m = Model(smollm2_path)
    yield m
    m.close()


@pytest.fixture(scope="module")
def gemma3_model(gemma3_path):
    """Gemma 3 270M loaded once per test module."""
    m = Model(gemma3_path)
    yield m
    m.close()
