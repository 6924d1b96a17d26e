"""Prompt tokens reused from recent prompts: a conversation's next turn tokenizes only what it adds.

Chat clients resend the whole history every turn, and tokenizing it again costs about 1.5 µs a
token here (tens of milliseconds for a long conversation, before the KV cache has a say). So the
builder remembers recent prompts' tokens and, for a new prompt that starts like one of them, takes
that one's tokens up to a cut and tokenizes only the text from the cut on.

Why the result is exact: llama.cpp's tokenizer first splits a text at every occurrence of a
special (control or user-defined) token's text, longest tokens first, then tokenizes each piece in
between on its own. The cut is placed just before such a token S, which both texts hold at the same
character c. The tokens before c come from the remembered prompt, the pieces of which are the same
as the new one's there. The new text from c on is tokenized alone. It starts with S, so its first
piece starts after a special token, as it does in the whole text. (SentencePiece's space prefix
and a token's whitespace stripping then come out the same.)

That holds as long as no special text in the new prompt covers S while running past the point
where the two texts part. So the cut sits at least the longest special text's length before that
point. Where the new text ends at that point (a prefix of the remembered one), any S before it
will do.

Only the BPE and SentencePiece tokenizers are handled, and not vocabularies that append an EOS.
The first few reuses are checked against a whole tokenization. On a mismatch, the memo is switched
off for the model and a warning is logged.
"""

from __future__ import annotations

import bisect
import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass

import llama_cpp.llama_cpp as L
import numpy as np

from llmhost.engine.llamacpp import Model

log = logging.getLogger(__name__)

MIN_REUSE = 64  # tokens: a shorter head is no cheaper to take than to tokenize
MAX_ENTRIES = 64  # prompts remembered (a few per conversation that is going on)
MAX_CHARS = 2 << 20  # characters of remembered text in all (with their tokens ≤ 16 MiB); one prompt may take a quarter
VERIFY_FIRST = 3  # reuses checked against tokenizing the whole text
_PROBE = 32  # characters compared before looking for the common prefix


@dataclass(frozen=True)
class _Cuts:
    starts: list[int]  # character offsets of the special tokens the text is split at, in order
    ends: list[int]  # where each of them ends
    index: list[int]  # each one's position in the tokens


@dataclass
class _Entry:
    text: str
    tokens: np.ndarray
    cuts: _Cuts | None = None  # found when the entry is first a candidate (a one-off prompt never is)


class TokenMemo:
    """``tokenize(text)`` equals ``model.tokenize(text, add_special=True, parse_special=True)``,
    reusing the tokens of the recent prompt that shares the longest head with ``text``. Safe to call
    from several threads."""

    def __init__(self, model: Model, *, max_entries: int = MAX_ENTRIES, max_chars: int = MAX_CHARS):
        self.model = model
        self.max_entries = max_entries
        self.max_chars = max_chars
        self.enabled = model.vocab_type in (L.LLAMA_VOCAB_TYPE_SPM, L.LLAMA_VOCAB_TYPE_BPE) and not model.add_eos
        self.tokens_reused = 0  # tokens taken from remembered prompts instead of tokenized
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._chars = 0
        self._unverified = VERIFY_FIRST
        self._lock = threading.Lock()

    def tokenize(self, text: str) -> np.ndarray:
        if not self.enabled or len(text) > self.max_chars // 4:
            return self._whole(text)
        cut = self._cut(text)
        if cut is None:
            tokens = self._whole(text)
        else:
            head, start = cut
            tokens = np.concatenate([head, self.model.tokenize(text[start:], add_special=False, parse_special=True)])
            if not self._verified(text, tokens):
                return self._whole(text)
            with self._lock:
                self.tokens_reused += len(head)
        self._remember(text, tokens)
        return tokens

    def _whole(self, text: str) -> np.ndarray:
        return self.model.tokenize(text, add_special=True, parse_special=True)

    def _cut(self, text: str) -> tuple[np.ndarray, int] | None:
        """The remembered tokens that ``text`` can start with, and where its own tokenizing starts."""
        with self._lock:
            entries = list(reversed(self._entries.values()))  # the most recent first
        if not entries:
            return None
        longest = self.model.special_tokens().longest
        best: tuple[int, _Entry, int] | None = None  # (tokens reused, entry, the cut's character offset)
        for entry in entries:
            if entry.text[:_PROBE] != text[:_PROBE]:
                continue
            cuts = entry.cuts or self._cuts(entry)
            shared = _common_prefix(entry.text, text)
            if shared == len(text):  # the new text ends where they part: a special text ending there will do
                k = bisect.bisect_right(cuts.ends, shared) - 1
            else:
                k = bisect.bisect_right(cuts.starts, shared - longest) - 1
            if k >= 0 and (best is None or cuts.index[k] > best[0]):
                best = (cuts.index[k], entry, cuts.starts[k])
        if best is None or best[0] < MIN_REUSE:
            return None
        n, entry, start = best
        return entry.tokens[:n], start

    def _verified(self, text: str, tokens: np.ndarray) -> bool:
        with self._lock:
            if self._unverified <= 0 or not self.enabled:
                return self.enabled
            self._unverified -= 1
        whole = self._whole(text)
        if np.array_equal(whole, tokens):
            return True
        with self._lock:
            self.enabled = False
            self._entries.clear()
            self._chars = 0
        log.warning("tokens of a prompt continued from a remembered one differ from its whole tokenization "
                    "(%d against %d tokens): prompts are tokenized whole for this model", len(tokens), len(whole))
        return False

    def _remember(self, text: str, tokens: np.ndarray) -> None:
        tokens = tokens.copy()  # the caller's array is its own to change
        tokens.flags.writeable = False
        entry = _Entry(text, tokens)
        with self._lock:
            old = self._entries.pop(text, None)
            if old is not None:
                self._chars -= len(old.text)
            self._entries[text] = entry
            self._chars += len(text)
            while len(self._entries) > self.max_entries or self._chars > self.max_chars:
                _, dropped = self._entries.popitem(last=False)
                self._chars -= len(dropped.text)

    def _cuts(self, entry: _Entry) -> _Cuts:
        """Where an entry's text was split at special tokens: each is found in the text in turn
        (llama.cpp splits at every occurrence of their text, so the n-th found is the n-th one in
        its tokens). Two threads may both find them: the same result, kept once."""
        text, tokens = entry.text, entry.tokens
        cut = self.model.special_tokens().cut
        starts: list[int] = []
        ends: list[int] = []
        index: list[int] = []
        first = 1 if self.model.add_bos else 0  # the BOS that tokenizing adds stands for no text
        cursor = 0
        for i in np.flatnonzero(cut[tokens]).tolist():
            if i < first:
                continue
            piece = self.model.token_text(int(tokens[i]))
            at = text.find(piece, cursor) if piece else -1
            if at < 0:
                break  # not where it was expected: keep the cuts found before it
            starts.append(at)
            ends.append(at + len(piece))
            index.append(i)
            cursor = at + len(piece)
        entry.cuts = _Cuts(starts, ends, index)
        return entry.cuts


def _common_prefix(a: str, b: str) -> int:
    """Characters at the start of ``a`` and ``b`` that are the same (slices compare in C)."""
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    lo, hi = 0, n  # a[:lo] == b[:lo] and a[:hi] != b[:hi]
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if a[lo:mid] == b[lo:mid]:
            lo = mid
        else:
            hi = mid
    return lo
