"""P4 cold start to first token, P7 memory estimate vs measured resident memory."""

from __future__ import annotations

import asyncio
import os
import statistics
import time
from pathlib import Path

import aiohttp

from benchmarks import inprocess
from benchmarks.harness import GEMMA3, SMOLLM2, THREADS, create_model, daemon, stream

PROMPT = "<|im_start|>user\nHello!<|im_end|>\n<|im_start|>assistant\n"
PARALLEL = int(os.environ.get("LLMHOST_NUM_PARALLEL", "4"))  # the daemon's default unless set


def p4(repeats: int = 3, pause: float = 1.0) -> dict:
    """First token of an unloaded model through the daemon ÷ in-process load + first token.

    ``daemon_cold``: each load comes ``pause`` seconds after the previous model was unloaded (an
    idle daemon, which has its spare runner ready by then). ``daemon_back_to_back``: the next load
    follows as soon as the model is unloaded (what this benchmark measured before the spare
    runner; the spare started by one load is then still importing at the next).
    Baselines: ``inprocess``, a context of one 4096-token sequence; ``inprocess_same_kv``, the
    KV pool the daemon's runner creates (4096 × LLMHOST_NUM_PARALLEL cells, which llama.cpp
    zero-fills: ~0.1 s more for 4 × 4096 cells of SmolLM2).
    """
    inprocess.silence_logs()
    baseline = statistics.median(inprocess.cold_first_token(SMOLLM2, PROMPT, THREADS) for _ in range(repeats))
    same_kv = statistics.median(inprocess.cold_first_token(SMOLLM2, PROMPT, THREADS, n_ctx=4096 * PARALLEL,
                                                           n_seq=PARALLEL) for _ in range(repeats))

    async def cold_starts(s: aiohttp.ClientSession, url: str, gap: float) -> list[float]:
        times = []
        for _ in range(repeats):
            await asyncio.sleep(gap)
            body = {"model": "cold", "prompt": PROMPT, "raw": True, "keep_alive": 0,
                    "options": {"num_predict": 1, "temperature": 0}}
            times.append((await stream(s, url, "/api/generate", body)).ttft)
            await _wait_unloaded(s, url)
        return times

    async def run(url: str) -> tuple[float, float]:
        await create_model(url, "cold", SMOLLM2)
        async with aiohttp.ClientSession() as s:
            spaced = await cold_starts(s, url, pause)
            back_to_back = await cold_starts(s, url, 0.0)
        return statistics.median(spaced), statistics.median(back_to_back)

    with daemon(LLMHOST_NUM_PARALLEL=str(PARALLEL)) as d:
        served, back_to_back = asyncio.run(run(d.url))
    return {"daemon_cold_ttft_s": served, "daemon_back_to_back_ttft_s": back_to_back,
            "inprocess_cold_ttft_s": baseline, "inprocess_same_kv_cold_ttft_s": same_kv,
            "ratio": served / baseline, "ratio_back_to_back": back_to_back / baseline,
            "ratio_same_kv": served / same_kv}


async def _wait_unloaded(s: aiohttp.ClientSession, url: str) -> None:
    for _ in range(100):
        async with s.get(url + "/api/ps") as r:
            if not (await r.json())["models"]:
                return
        await asyncio.sleep(0.05)


def _runner_rss(daemon_pid: int) -> int:
    """Resident bytes of the daemon's (only) runner holding a model (its spare is not one)."""
    for child in Path(f"/proc/{daemon_pid}/task/{daemon_pid}/children").read_text().split():
        if Path(f"/proc/{child}/comm").read_text().strip() != "llmhost-runner":
            continue
        status = Path(f"/proc/{child}/status").read_text()
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no runner process found")


def p7(contexts=(2048, 8192), flash_modes=("auto", "off")) -> dict:
    """Estimate ÷ measured RSS after the first decode, for both test models, two num_ctx values and
    flash attention as llama.cpp chooses it and off (whose attention scores the estimate adds)."""
    from llmhost.daemon.memory import estimate
    from llmhost.engine.cpu import repack_enabled
    from llmhost.registry.gguf_meta import read_gguf_info

    results = {}
    repack = repack_enabled("auto")  # what the daemon's runners do (LLMHOST_CPU_REPACK's default)

    async def measure(d, name: str, num_ctx: int) -> int:
        async with aiohttp.ClientSession() as s:
            await stream(s, d.url, "/api/generate", {"model": name, "prompt": "Hello", "raw": True,
                                                     "keep_alive": "10m",
                                                     "options": {"num_ctx": num_ctx, "num_predict": 4}})
            rss = _runner_rss(d.proc.pid)
            await stream(s, d.url, "/api/generate", {"model": name, "prompt": "", "keep_alive": 0})
            await _wait_unloaded(s, d.url)
            return rss

    for flash in flash_modes:
        with daemon(LLMHOST_NUM_PARALLEL="4", LLMHOST_FLASH_ATTENTION=flash) as d:
            for label, path in (("smollm2", SMOLLM2), ("gemma3", GEMMA3)):
                asyncio.run(create_model(d.url, label, path))
                info = read_gguf_info(path)
                for num_ctx in contexts:
                    measured = asyncio.run(measure(d, label, num_ctx))
                    estimated = estimate(info, num_ctx, 4, 512, repack=repack, flash_attention=flash)
                    name = f"{label}_ctx{num_ctx}" + ("" if flash == "auto" else f"_fa_{flash}")
                    results[name] = {"estimate_mib": estimated / 2**20, "measured_mib": measured / 2**20,
                                     "ratio": estimated / measured}
                    time.sleep(0.2)
    return results
