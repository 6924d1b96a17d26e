"""Durations as Ollama takes them: seconds, Go strings, negative for forever."""

from __future__ import annotations

import math

import pytest

from llmhost.units import parse_duration

DURATIONS = {
    "seconds": (30, 30.0),
    "go string": ("1h30m", 5400.0),
    "negative: forever": (-1, math.inf),
    "negative string": ("-5m", math.inf),
    "beyond Go's longest duration: forever": (1e308, math.inf),
    "an integer beyond any float": (10**400, math.inf),
    "just under the cap": (9_000_000_000, 9e9),
}


@pytest.mark.parametrize("value, seconds", DURATIONS.values(), ids=DURATIONS.keys())
def test_durations(value, seconds):
    assert parse_duration(value) == seconds


@pytest.mark.parametrize("value", ["", "  ", "-", "+", float("nan"), "5 parsecs", True, [], {}])
def test_bad_durations_are_400(value):
    with pytest.raises(Exception) as err:
        parse_duration(value)
    assert getattr(err.value, "status", None) == 400 and "invalid duration" in str(err.value)
