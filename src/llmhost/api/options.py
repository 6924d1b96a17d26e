"""Model options (Ollama's ``options`` object and Modelfile ``PARAMETER`` lines).

Load-time options decide how a runner is started (a change forces a reload); runtime options only
shape sampling of one request. Both are checked here (type, range, finiteness), in one place, for
requests, Modelfiles and the runner.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from llmhost.errors import InvalidOption

log = logging.getLogger(__name__)

INT, FLOAT, BOOL, STRING, STRINGS = "integer", "float", "boolean", "string", "array of strings"

RUNTIME_OPTIONS: dict[str, str] = {
    "num_keep": INT,
    "seed": INT,
    "num_predict": INT,
    "top_k": INT,
    "top_p": FLOAT,
    "min_p": FLOAT,
    "typical_p": FLOAT,
    "repeat_last_n": INT,
    "temperature": FLOAT,
    "repeat_penalty": FLOAT,
    "presence_penalty": FLOAT,
    "frequency_penalty": FLOAT,
    "mirostat": INT,
    "mirostat_tau": FLOAT,
    "mirostat_eta": FLOAT,
    "stop": STRINGS,
}

LOAD_OPTIONS: dict[str, str] = {
    "num_ctx": INT,
    "num_batch": INT,
    "num_gpu": INT,
    "main_gpu": INT,
    "use_mmap": BOOL,
    "num_thread": INT,
    "kv_cache_type": STRING,  # ours (Ollama has only OLLAMA_KV_CACHE_TYPE): f16, q8_0 or q4_0
}

OPTION_TYPES: dict[str, str] = {**RUNTIME_OPTIONS, **LOAD_OPTIONS}

# Ollama's defaults (api.DefaultOptions); num_ctx comes from settings.
DEFAULTS: dict[str, Any] = {
    "num_keep": -1,
    "seed": -1,
    "num_predict": -1,
    "top_k": 40,
    "top_p": 0.9,
    "min_p": 0.0,
    "typical_p": 1.0,
    "repeat_last_n": 64,
    "temperature": 0.8,
    "repeat_penalty": 1.1,
    "presence_penalty": 0.0,
    "frequency_penalty": 0.0,
    "mirostat": 0,
    "mirostat_tau": 5.0,
    "mirostat_eta": 0.1,
    "stop": [],
}


# Bounds beyond the type, inclusive. Integers reach llama.cpp as int32 unless listed; load options
# get tighter bounds so one request cannot make a runner allocate without limit (docs/design.md).
MAX_NUM_CTX = 1 << 24  # tokens per sequence; llama.cpp's n_ctx (× parallel) is a uint32
MAX_NUM_BATCH = 1 << 16  # tokens per llama_decode; more is never faster (ubatches are ≤ 512)
MAX_NUM_THREAD = 512  # GGML_MAX_N_THREADS
_INT32 = (-(2**31), 2**31 - 1)
INT_RANGES: dict[str, tuple[int, int]] = {
    "num_ctx": (0, MAX_NUM_CTX),  # 0: the daemon's default
    "num_batch": (0, MAX_NUM_BATCH),  # 0: the default (512)
    "num_thread": (0, MAX_NUM_THREAD),  # 0: the daemon's default
    "num_gpu": (-1, _INT32[1]),  # -1: as many layers as fit
    "main_gpu": (0, _INT32[1]),
    "seed": (-(2**63), 2**63 - 1),  # Ollama's is a Go int; the sampler takes its low 32 bits
}
FLOAT_LIMIT = 3.4028234663852886e38  # llama.cpp takes floats as float32: beyond this they become inf

# KV cache element types, as Ollama's OLLAMA_KV_CACHE_TYPE names them: f16 2 bytes an element, q8_0
# 34 bytes per 32, q4_0 18 per 32 (quantized ones need flash attention; the runner switches it on).
KV_CACHE_TYPES = ("f16", "q8_0", "q4_0")
# The values a string option may take (compared in lower case).
STRING_CHOICES: dict[str, tuple[str, ...]] = {"kv_cache_type": KV_CACHE_TYPES}


def _check(name: str, kind: str, value: Any) -> Any:
    error = InvalidOption(f'option "{name}" must be of type {kind}')
    if kind == INT:
        if isinstance(value, bool):
            raise error
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if not isinstance(value, int):
            raise error
        low, high = INT_RANGES.get(name, _INT32)
        if not low <= value <= high:
            raise InvalidOption(f'option "{name}" must be between {low} and {high}')
        return value
    if kind == FLOAT:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise error
        return _finite(name, value)
    if kind == BOOL:
        if not isinstance(value, bool):
            raise error
        return value
    if kind == STRING:
        if not isinstance(value, str):
            raise error
        return _choice(name, value)
    if isinstance(value, str):  # a single stop string is accepted, as Ollama does
        return [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise error
    return list(value)


def _choice(name: str, value: str) -> str:
    choices = STRING_CHOICES.get(name)
    value = value.strip().lower() if choices else value
    if choices and value not in choices:
        raise InvalidOption(f'option "{name}" must be one of {", ".join(choices)}')
    return value


def _finite(name: str, value: int | float) -> float:
    """A float llama.cpp can take: NaN (which empties an answer), inf and float32 overflow refused."""
    try:
        number = float(value)
    except OverflowError:  # an integer beyond any float
        number = math.inf
    if not abs(number) <= FLOAT_LIMIT:  # also false for NaN
        raise InvalidOption(f'option "{name}" must be a finite number')
    return number


def validate_options(options: Any) -> dict[str, Any]:
    """Type-check a request's ``options``; unknown keys are dropped with a warning (as Ollama does)."""
    if options is None:
        return {}
    if not isinstance(options, dict):
        raise InvalidOption('"options" must be an object')
    checked = {}
    for name, value in options.items():
        kind = OPTION_TYPES.get(name)
        if kind is None:
            log.warning("ignoring unknown option %r", name)
            continue
        if value is None:
            continue
        checked[name] = _check(name, kind, value)
    return checked


def parse_parameter(name: str, text: str) -> Any:
    """Typed value of a Modelfile ``PARAMETER name text`` line; unknown names raise InvalidOption."""
    kind = OPTION_TYPES.get(name)
    if kind is None:
        raise InvalidOption(f"unknown parameter '{name}'")
    text = text.strip()
    try:
        if kind == INT:
            return _check(name, kind, int(text))
        if kind == FLOAT:
            return _check(name, kind, float(text))
        if kind == BOOL:
            lowered = text.lower()
            if lowered not in ("true", "false"):
                raise ValueError
            return lowered == "true"
    except ValueError:
        raise InvalidOption(f"invalid value for parameter '{name}': {text[:40]!r} is not a {kind}") from None
    if len(text) >= 2 and text[0] == text[-1] == '"':
        text = text[1:-1]
    return _check(name, kind, text) if kind == STRING else [text]


def merge_parameters(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """Combine parameters; ``stop`` lists accumulate, other keys are overridden by ``extra``."""
    merged = dict(base)
    for name, value in extra.items():
        if name == "stop" and "stop" in merged:
            merged["stop"] = list(dict.fromkeys([*merged["stop"], *value]))
        else:
            merged[name] = value
    return merged


def split_options(options: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(runtime, load) halves of a validated options dict."""
    runtime = {k: v for k, v in options.items() if k in RUNTIME_OPTIONS}
    load = {k: v for k, v in options.items() if k in LOAD_OPTIONS}
    return runtime, load
