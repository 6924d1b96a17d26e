"""Model options (Ollama's ``options`` object and Modelfile ``PARAMETER`` lines), checked against
the one table of them, ``api.option_table``.

Load-time options decide how a runner is started (a change forces a reload); runtime options only
shape sampling of one request. Both are checked here (type, range, finiteness), in one place, for
requests, Modelfiles and the runner.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from llmhost.api.option_table import BOOL, FLOAT, INT, OPTION_SPECS, OPTIONS, STRING, STRINGS, OptionSpec
from llmhost.api.option_table import KV_CACHE_TYPES as KV_CACHE_TYPES  # re-exported: config and the engine
from llmhost.errors import InvalidOption

log = logging.getLogger(__name__)

# Views of the table, for the modules that want one kind of option.
RUNTIME_OPTIONS: dict[str, str] = {o.name: o.type for o in OPTIONS if o.when == "request"}
LOAD_OPTIONS: dict[str, str] = {o.name: o.type for o in OPTIONS if o.when == "load"}
OPTION_TYPES: dict[str, str] = {o.name: o.type for o in OPTIONS}
# Defaults of the request options; load options may default to a setting, see ``load_option``.
DEFAULTS: dict[str, Any] = {o.name: o.default for o in OPTIONS if o.when == "request"}

FLOAT_LIMIT = 3.4028234663852886e38  # llama.cpp takes floats as float32: beyond this they become inf


def _check(spec: OptionSpec, value: Any) -> Any:
    name, kind = spec.name, spec.type
    error = InvalidOption(f'option "{name}" must be of type {kind}')
    if kind == INT:
        if isinstance(value, bool):
            raise error
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if not isinstance(value, int):
            raise error
        low, high = spec.bounds
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
        return _choice(spec, value)
    if isinstance(value, str):  # a single stop string is accepted, as Ollama does
        return [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise error
    return list(value)


def _choice(spec: OptionSpec, value: str) -> str:
    if not spec.choices:
        return value
    value = value.strip().lower()
    if value not in spec.choices:
        raise InvalidOption(f'option "{spec.name}" must be one of {", ".join(spec.choices)}')
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
        spec = OPTION_SPECS.get(name)
        if spec is None:
            log.warning("ignoring unknown option %r", name)
            continue
        if value is None:
            continue
        checked[name] = _check(spec, value)
    return checked


def parse_parameter(name: str, text: str) -> Any:
    """Typed value of a Modelfile ``PARAMETER name text`` line; unknown names raise InvalidOption."""
    spec = OPTION_SPECS.get(name)
    if spec is None:
        raise InvalidOption(f"unknown parameter '{name}'")
    kind, text = spec.type, text.strip()
    try:
        if kind == INT:
            return _check(spec, int(text))
        if kind == FLOAT:
            return _check(spec, float(text))
        if kind == BOOL:
            lowered = text.lower()
            if lowered not in ("true", "false"):
                raise ValueError
            return lowered == "true"
    except ValueError:
        raise InvalidOption(f"invalid value for parameter '{name}': {text[:40]!r} is not a {kind}") from None
    if len(text) >= 2 and text[0] == text[-1] == '"':
        text = text[1:-1]
    return _check(spec, text) if kind == STRING else [text]


def is_list_option(name: str) -> bool:
    """Whether ``name`` takes a list of strings (``stop``), which Modelfile lines accumulate."""
    spec = OPTION_SPECS.get(name)
    return spec is not None and spec.type == STRINGS


def merge_parameters(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """Combine parameters; ``stop`` lists accumulate, other keys are overridden by ``extra``."""
    merged = dict(base)
    for name, value in extra.items():
        if is_list_option(name) and name in merged:
            merged[name] = list(dict.fromkeys([*merged[name], *value]))
        else:
            merged[name] = value
    return merged


def split_options(options: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(runtime, load) halves of a validated options dict."""
    runtime = {k: v for k, v in options.items() if k in RUNTIME_OPTIONS}
    load = {k: v for k, v in options.items() if k in LOAD_OPTIONS}
    return runtime, load


def load_option(load: dict[str, Any], name: str, settings: Any) -> Any:
    """The value of load option ``name``: ``load``'s (validated) one, else its default — the
    ``settings`` field the table names (a ``config.Settings``), or the table's own default."""
    spec = OPTION_SPECS[name]
    value = load.get(name)
    if value is None or (spec.zero_is_default and value == 0):
        return getattr(settings, spec.setting) if spec.setting else spec.default
    return value
