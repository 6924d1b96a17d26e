"""Repetition penalties (repeat, frequency, presence) over a window of recent tokens.

The same arithmetic as llama.cpp's penalties sampler, applied to a batch row's logits in place
before the native chain runs. llama.cpp's own sampler looks every vocabulary entry up in its
history map, ~110 µs a token for SmolLM2's 49k-token vocabulary (2% of a decode step); this
touches only the ≤ ``last_n`` distinct tokens of the history.
"""

from __future__ import annotations

import collections

import numpy as np


class Penalties:
    """The penalty history of one sequence and the penalties it puts on the next token's logits."""

    def __init__(self, last_n: int, repeat: float, frequency: float, presence: float):
        self._window: collections.deque[int] = collections.deque(maxlen=last_n)
        self._counts: collections.Counter[int] = collections.Counter()
        # llama.cpp's parameters are float32: the same values, so results match its own.
        self._repeat = float(np.float32(repeat))
        self._frequency = np.float32(frequency)
        self._presence = np.float32(presence)
        self._by_count = bool(frequency or presence)

    def accept(self, token: int) -> None:
        """Add a token (sampled, or from the prompt) to the history."""
        window = self._window
        if len(window) == window.maxlen:
            old = window[0]
            self._counts[old] -= 1
            if not self._counts[old]:
                del self._counts[old]
        window.append(token)
        self._counts[token] += 1

    def apply(self, logits) -> None:
        """Penalise, in place, the logits of the tokens in the history.

        ``logits``: one float32 per vocabulary entry (a ctypes array over llama.cpp's buffer, or a
        numpy array). A plain loop over ≤ ``last_n`` entries: after a decode has filled the caches
        with weights, it took ~4× less time than the same in numpy calls. Each float32 product or
        quotient is computed in double and rounded once when stored, which gives the float32 result
        exactly, so the logits match llama.cpp's sampler bit for bit.
        """
        repeat = self._repeat
        for token, count in self._counts.items():
            value = logits[token]
            # Dividing a negative logit would make the token more likely: those are multiplied.
            value = value * repeat if value <= 0 else value / repeat
            if self._by_count:
                value = np.float32(value) - (np.float32(count) * self._frequency + self._presence)
            logits[token] = value
