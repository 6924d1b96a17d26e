"""Model options (Ollama's ``options`` object and Modelfile ``PARAMETER`` lines).

Load-time options decide how a runner is started (a change forces a reload); runtime options only
shape sampling of one request. Both are type-checked here, in one place, for requests and Modelfiles.
"""

from __future__ import annotations

import logging
from typing import Any

from llmhost.errors import InvalidOption

log = logging.getLogger(__name__)

INT, FLOAT, BOOL, STRINGS = "integer", "float", "boolean", "array of strings"

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


def _check(name: str, kind: str, value: Any) -> Any:
    error = InvalidOption(f'option "{name}" must be of type {kind}')
    if kind == INT:
        if isinstance(value, bool):
            raise error
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if not isinstance(value, int):
            raise error
        return value
    if kind == FLOAT:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise error
        return float(value)
    if kind == BOOL:
        if not isinstance(value, bool):
            raise error
        return value
    if isinstance(value, str):  # a single stop string is accepted, as Ollama does
        return [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise error
    return list(value)


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
            return int(text)
        if kind == FLOAT:
            return float(text)
        if kind == BOOL:
            lowered = text.lower()
            if lowered not in ("true", "false"):
                raise ValueError
            return lowered == "true"
    except ValueError:
        raise InvalidOption(f"invalid value for parameter '{name}': {text!r} is not a {kind}") from None
    if len(text) >= 2 and text[0] == text[-1] == '"':
        text = text[1:-1]
    return [text]


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
