"""Cached prompts parked in host memory, so the KV cache holds only what is running.

llama.cpp attends over every KV cell up to the highest one in use, masked or not, so the idle
prompts that prefix reuse keeps in the cache slow down every sequence that runs beside them: three
idle 1,500-token prompts cost SmolLM2 a quarter of its decode rate (docs/benchmarks.md). So when a
sequence is admitted, the KV manager copies out the cells of the idle slots (``llama_state_seq_get``,
~9 ms for 1,500 SmolLM2 tokens) and frees them; the new sequence then lies in the lowest cells. A slot
whose last request continued a cached prompt (a conversation under way) is parked only once it has
been idle for a second: its next turn is likely to come at once (an agent's next call), and parking
it would cost two copies (lock-step conversations ran 4% slower when every idle slot was parked).
A one-shot prompt goes at the next admission. A later prompt that continues a parked one gets its
cells copied back (~5 ms, against seconds to evaluate them again) and is served as if they had never
left. A slot overwritten or evicted for room is parked rather than dropped, whatever its age.

The parked records live in one LRU list under a byte budget (``LLMHOST_KV_HOST_CACHE``; auto: the
KV cache's size, at most 1 GiB); past it, the least recently used are dropped, which is what
evicting an idle slot did before. This also keeps more conversations cached than the runner has
slots. On a sliding-window model llama.cpp saves only a sequence's last window, so such a record
comes back only for a prompt that continues all of it (``KVCacheManager._parked_reuse``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def common_prefix_len(a: np.ndarray, b: np.ndarray) -> int:
    """Length of the longest common prefix of two token arrays."""
    n = min(len(a), len(b))
    if n == 0:
        return 0
    diff = np.flatnonzero(a[:n] != b[:n])
    return int(diff[0]) if diff.size else n


# Copying a parked cell back costs about 1/100 of evaluating its token again (SmolLM2 on a CPU:
# 5 ms for 1,500 cells against 2.5 s); with a margin, a restore must reuse at least this share of
# the record it copies, and a few tokens besides.
RESTORE_SHARE = 1 / 64
MIN_RESTORE = 16
# Records kept at most, whatever their bytes: every admission scans them for a prefix (a few µs
# each), and many short prompts would otherwise fill a large budget with thousands.
MAX_RECORDS = 256


@dataclass(frozen=True, eq=False)
class SwapRecord:
    """A sequence's KV cells saved in host memory, and the slot mirror to restore with them."""

    data: np.ndarray
    tokens: np.ndarray
    exact: int  # leading tokens whose cells equal a fresh evaluation (kv_cache.Slot.exact)

    @property
    def n(self) -> int:
        return len(self.tokens)

    @property
    def reusable(self) -> np.ndarray:
        return self.tokens[: self.exact]


def worth_restoring(record: SwapRecord, n_reuse: int) -> bool:
    """Whether copying ``record`` back to reuse its first ``n_reuse`` tokens beats evaluating them."""
    return n_reuse >= max(MIN_RESTORE, record.n * RESTORE_SHARE)


@dataclass
class HostCacheStats:
    """Totals since start, and what is held now (written by the engine thread only)."""

    parked_total: int = 0  # idle slots copied out to host memory
    parked_restored_total: int = 0  # parked prompts copied back for a request that continued them
    parked_dropped_total: int = 0  # parked prompts dropped for the budget
    parked_bytes: int = 0
    parked_prompts: int = 0


class HostCache:
    """Parked prompts, least recently used first, within ``budget`` bytes (0: nothing is parked)."""

    def __init__(self, budget: int):
        self.budget = max(0, budget)
        self._records: list[SwapRecord] = []  # oldest first
        self.stats = HostCacheStats()

    @property
    def enabled(self) -> bool:
        return self.budget > 0

    def fits(self, nbytes: int) -> bool:
        return 0 < nbytes <= self.budget

    def put(self, record: SwapRecord) -> None:
        """Keep ``record`` (the caller checked ``fits``), dropping the oldest until it fits, and
        while ``MAX_RECORDS`` are kept."""
        while self._records and (self.stats.parked_bytes + record.data.nbytes > self.budget
                                 or len(self._records) >= MAX_RECORDS):
            self._forget(self._records[0])
            self.stats.parked_dropped_total += 1
        self._records.append(record)
        self.stats.parked_bytes += record.data.nbytes
        self.stats.parked_prompts = len(self._records)
        self.stats.parked_total += 1

    def longest_prefix(self, prompt: np.ndarray) -> tuple[SwapRecord | None, int]:
        """The parked record sharing the longest reusable prefix with ``prompt``, and its length
        (the newest wins a tie)."""
        best, best_len = None, 0
        for record in reversed(self._records):
            n = common_prefix_len(record.reusable, prompt)
            if n > best_len:
                best, best_len = record, n
        return best, best_len

    def restored(self, record: SwapRecord, *, keep: bool) -> None:
        """``record`` was copied back; ``keep`` leaves it parked (the request took only a shared
        prefix of it, and its own continuation may still come back), now as the newest."""
        self.stats.parked_restored_total += 1
        self._forget(record)
        if keep:
            self._records.append(record)
            self.stats.parked_bytes += record.data.nbytes
            self.stats.parked_prompts = len(self._records)

    def _forget(self, record: SwapRecord) -> None:
        self._records.remove(record)
        self.stats.parked_bytes -= record.data.nbytes
        self.stats.parked_prompts = len(self._records)
