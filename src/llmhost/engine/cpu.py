"""Whether llama.cpp may use its repacked CPU kernels ("extra buffer types") on this machine.

llama.cpp can copy some quantized weights (Q4_0, Q4_K, IQ4_NL on x86) into an interleaved layout at
load time and run faster matrix kernels on it; that is what ``llama_model_params.use_extra_bufts``
switches on. On Xeons with AMX, a native build also registers its AMX buffer type there, and that
path segfaults in ``llama_decode`` (docs/benchmarks.md, "Fast kernels"), so it stays off on CPUs
that advertise AMX. No ``llama_cpp`` import here: the daemon uses this for its memory estimate.
"""

from __future__ import annotations

import functools
from pathlib import Path

REPACK_MODES = ("auto", "on", "off")
# /proc/cpuinfo flags of Intel AMX; any of them: the AMX buffer type would be used, and crash.
AMX_FLAGS = frozenset({"amx_tile", "amx_int8", "amx_bf16"})


@functools.lru_cache(maxsize=4)
def cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> frozenset[str]:
    """The first CPU's feature flags (Linux; read once); empty where there is no such file."""
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as f:
            for line in f:
                key, sep, value = line.partition(":")
                if sep and key.strip() in ("flags", "Features"):  # x86, ARM
                    return frozenset(value.split())
    except OSError:
        pass
    return frozenset()


def repack_enabled(mode: str, flags: frozenset[str] | None = None) -> bool:
    """Whether extra buffer types are used: ``on``/``off`` as given; ``auto`` unless the CPU has AMX."""
    if mode not in REPACK_MODES:
        raise ValueError(f"cpu repack must be one of {', '.join(REPACK_MODES)}, got {mode!r}")
    if mode != "auto":
        return mode == "on"
    return not (AMX_FLAGS & (cpu_flags() if flags is None else flags))
