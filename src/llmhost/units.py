"""Parsing of the durations and byte sizes users type (keep_alive, LLMHOST_MAX_MEMORY)."""

from __future__ import annotations

import math
import re

from llmhost.errors import BadRequest

_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}

FOREVER = math.inf
# Go's longest time.Duration (2^63-1 ns, ~292 years): what Ollama keeps a model for with a negative
# keep_alive, and the date /api/ps shows for it. Nothing longer can be told apart from forever.
MAX_DURATION = (2**63 - 1) / 1e9


_EXPECTED = 'expected seconds or a string like "5m" (negative: forever)'


def _invalid(value: object, hint: str = _EXPECTED) -> BadRequest:
    shown = repr(value)
    shown = shown if len(shown) <= 40 else shown[:40] + "…"  # never echo a huge body back
    return BadRequest(f"invalid duration {shown}: {hint}")


def parse_duration(value: object) -> float:
    """Seconds from a keep_alive value: a number of seconds or a Go duration string ("10m", "1h30m").

    Negative means forever (returned as ``math.inf``), and so does anything at or beyond
    ``MAX_DURATION``. Raises BadRequest on anything else, NaN and "" included.
    """
    if isinstance(value, bool):
        raise _invalid(value)
    if isinstance(value, (int, float)):
        seconds = _number(value)
    elif isinstance(value, str):
        seconds = _parse_duration_string(value.strip())
    else:
        raise _invalid(value)
    if math.isnan(seconds):
        raise _invalid(value)
    return FOREVER if seconds < 0 or seconds >= MAX_DURATION else seconds


def _number(value: int | float) -> float:
    try:
        return float(value)
    except OverflowError:  # an int beyond float's range: far past MAX_DURATION either way
        return -math.inf if value < 0 else math.inf


def _parse_duration_string(text: str) -> float:
    sign, body = 1.0, text
    if body[:1] in ("+", "-"):
        sign, body = (-1.0 if body[0] == "-" else 1.0), body[1:]
    if re.fullmatch(r"\d+(\.\d+)?", body):
        return sign * float(body)
    if not body or _DURATION_PART.sub("", body) != "":
        raise _invalid(text, 'use seconds or a duration such as "30s", "10m", "1h"')
    total = sum(float(n) * _DURATION_UNITS[u] for n, u in _DURATION_PART.findall(body))
    return sign * total


_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([kmgt]i?b?|b)?", re.IGNORECASE)
_SIZE_UNITS = {
    "": 1, "b": 1,
    "k": 1000, "kb": 1000, "kib": 1024, "ki": 1024,
    "m": 1000**2, "mb": 1000**2, "mib": 1024**2, "mi": 1024**2,
    "g": 1000**3, "gb": 1000**3, "gib": 1024**3, "gi": 1024**3,
    "t": 1000**4, "tb": 1000**4, "tib": 1024**4, "ti": 1024**4,
}


def parse_size(text: str) -> int:
    """Bytes from "123", "512MiB", "2GiB", "1.5GB". Raises BadRequest when malformed."""
    match = _SIZE.fullmatch(text.strip())
    if not match:
        raise BadRequest(f"invalid size {text!r}: use bytes or a unit such as 512MiB or 2GiB")
    number, unit = match.groups()
    return int(float(number) * _SIZE_UNITS[(unit or "").lower()])


def format_size(n: float) -> str:
    """Human size the way Ollama prints it (decimal units): 98 MB, 1.2 GB."""
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= scale:
            value = n / scale
            return f"{value:.1f} {unit}" if value < 10 else f"{value:.0f} {unit}"
    return f"{int(n)} B"
