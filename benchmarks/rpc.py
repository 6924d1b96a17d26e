"""``scripts/bench rpc``: SmolLM2 decode and prefill, a local runner vs the same model split over two
``llm worker`` processes on loopback (docs/scale-out.md). Needs llama.cpp's RPC backend (scripts/setup).

Both runners are loaded at once and asked in turn, ``BENCH_ROUNDS`` rounds (default 5), medians. The
split puts 15 and 16 of SmolLM2's 31 layers (plus output) on the two workers, so every token crosses
both; the workers share this machine's cores with the runner, so the ratio is the protocol's cost,
not what separate machines would give.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.harness import SMOLLM2, THREADS
from tests.support.rpc_workers import start_worker
from tests.support.runner_process import RunnerProcess

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "5"))
LONG = "Summarise: " + "The quick brown fox jumps over the lazy dog. " * 50


def _measure(runner: RunnerProcess) -> tuple[float, float]:
    """(decode tok/s over 128 greedy tokens, prefill tok/s of a ~500-token prompt never seen before)."""
    final = runner.completion({"prompt": "Once upon a time", "options": {"temperature": 0, "num_predict": 128}})[-1]
    decode = final["eval_count"] / (final["eval_duration"] / 1e9)
    final = runner.completion({"prompt": LONG + str(time.time()), "options": {"temperature": 0, "num_predict": 1}})[-1]
    prefill = final["prompt_eval_count"] / (final["prompt_eval_duration"] / 1e9)
    return decode, prefill


def rpc() -> dict[str, Any]:
    from llmhost.engine import rpc as ggml_rpc

    if not ggml_rpc.supports_rpc():
        return {"skipped": "llama-cpp-python has no RPC backend: run scripts/setup"}
    with tempfile.TemporaryDirectory(prefix="llmhost-bench-rpc-") as tmp:
        work = Path(tmp)
        workers = [start_worker(work / f"worker{i}.log", "--threads", str(THREADS)) for i in range(2)]
        results: dict[str, list[tuple[float, float]]] = {"local": [], "split": []}
        try:
            (work / "local").mkdir()
            (work / "split").mkdir()
            servers = ",".join(w.address for w in workers)
            with RunnerProcess(SMOLLM2, work / "local", ctx_size=2048, parallel=1, threads=THREADS) as local, \
                 RunnerProcess(SMOLLM2, work / "split", ctx_size=2048, parallel=1, threads=THREADS,
                               extra=("--rpc", servers, "--rpc-layers", "15,16")) as split:
                _measure(local), _measure(split)  # warm both
                for _ in range(ROUNDS):
                    results["local"].append(_measure(local))
                    results["split"].append(_measure(split))
        finally:
            for worker in workers:
                worker.kill()
    out: dict[str, Any] = {}
    for name, runs in results.items():
        out[f"{name}_decode_tok_s"] = statistics.median(r[0] for r in runs)
        out[f"{name}_prefill_tok_s"] = statistics.median(r[1] for r in runs)
    out["decode_split_vs_local"] = out["split_decode_tok_s"] / out["local_decode_tok_s"]
    out["prefill_split_vs_local"] = out["split_prefill_tok_s"] / out["local_prefill_tok_s"]
    out["rounds"] = ROUNDS
    return out
