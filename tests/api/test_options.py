"""Options and Modelfile parameters: checked and refused in words that name the option."""

from __future__ import annotations

import pytest

from llmhost.api.options import parse_parameter, validate_options
from llmhost.errors import InvalidOption

# ---- float options are finite ----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["temperature", "top_p", "repeat_penalty", "min_p", "mirostat_tau"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf"), 1e39, 10**400],
                         ids=["nan", "inf", "-inf", "beyond float32", "huge int"])
def test_float_options_must_be_finite(name, value):
    with pytest.raises(InvalidOption, match=f'option "{name}" must be a finite number'):
        validate_options({name: value})


@pytest.mark.parametrize("text", ["nan", "inf", "-Infinity", "1e39"])
def test_a_modelfile_parameter_must_be_finite(text):
    with pytest.raises(InvalidOption, match="finite"):
        parse_parameter("temperature", text)


# ---- the KV cache type -----------------------------------------------------------------------------


@pytest.mark.parametrize("value, message", [
    ("q5_1", 'option "kv_cache_type" must be one of f16, q8_0, q4_0'),
    (8, 'option "kv_cache_type" must be of type string'),
])
def test_a_bad_kv_cache_type_option_is_refused(value, message):
    with pytest.raises(InvalidOption, match=message):
        validate_options({"kv_cache_type": value})


def test_a_modelfile_parameter_names_the_kv_cache_type():
    assert parse_parameter("kv_cache_type", "Q4_0") == "q4_0"
    with pytest.raises(InvalidOption, match="must be one of"):
        parse_parameter("kv_cache_type", "f32")


# ---- draft_num_predict -----------------------------------------------------------------------------


@pytest.mark.parametrize("value, message", [
    ("eight", 'option "draft_num_predict" must be of type integer'),
    (2**40, 'option "draft_num_predict" must be between'),
    (True, 'option "draft_num_predict" must be of type integer'),
])
def test_a_bad_draft_num_predict_is_refused(value, message):
    with pytest.raises(InvalidOption, match=message):
        validate_options({"draft_num_predict": value})


def test_any_int32_draft_num_predict_is_taken_as_ollama_takes_it():
    """Ollama accepts any integer (0 or less: no drafting); the engine tries at most MAX_DRAFT."""
    assert validate_options({"draft_num_predict": -5}) == {"draft_num_predict": -5}
    assert validate_options({"draft_num_predict": 1000}) == {"draft_num_predict": 1000}
    assert parse_parameter("draft_num_predict", "8") == 8
