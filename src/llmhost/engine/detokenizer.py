"""Incremental detokenization: token pieces (bytes) in, text that is safe to stream out.

Two things must never reach a client:

- half a UTF-8 character: byte-level BPE splits emoji and CJK characters across tokens, so bytes are
  fed through an incremental UTF-8 decoder that keeps an incomplete tail until it completes;
- any part of a stop string: text that could still turn into a stop string is held back; when a stop
  string completes, the text before it is released and everything from the stop string on is dropped.

The held-back text is bounded by the longest stop string, so each push is O(len(stop)).
"""

from __future__ import annotations

import codecs
from collections.abc import Sequence


class Detokenizer:
    """Turns a stream of token pieces into releasable text for one sequence."""

    def __init__(self, stop: Sequence[str] = ()):
        self._stops = sorted({s for s in stop if s}, key=len)
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._held = ""  # decoded text that might still be the start of a stop string
        self.stopped = False  # a stop string matched; nothing more will be released

    def push(self, piece: bytes) -> str:
        """Add one token's bytes; return the text that can be sent now (possibly empty)."""
        if self.stopped:
            return ""
        self._held += self._utf8.decode(piece)
        return self._release(final=False)

    def finish(self) -> str:
        """Generation ended (EOG, length, …): flush whatever is held that is not a stop string.

        An incomplete UTF-8 tail at the very end becomes U+FFFD rather than being lost silently.
        """
        if self.stopped:
            return ""
        self._held += self._utf8.decode(b"", final=True)
        return self._release(final=True)

    def _release(self, *, final: bool) -> str:
        cut = self._first_stop()
        if cut >= 0:
            text, self._held, self.stopped = self._held[:cut], "", True
            return text
        keep = 0 if final else self._partial_stop_len()
        split = len(self._held) - keep
        text, self._held = self._held[:split], self._held[split:]
        return text

    def _first_stop(self) -> int:
        """Index of the earliest complete stop string in the held text, or -1."""
        found = [i for i in (self._held.find(s) for s in self._stops) if i >= 0]
        return min(found, default=-1)

    def _partial_stop_len(self) -> int:
        """Length of the longest held suffix that is a proper prefix of some stop string."""
        best = 0
        for stop in self._stops:
            for n in range(min(len(stop) - 1, len(self._held)), best, -1):
                if self._held.endswith(stop[:n]):
                    best = n
                    break
        return best
