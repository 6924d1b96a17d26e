"""Flash attention on and off (``LLMHOST_FLASH_ATTENTION``), side by side, through the daemon.

For SmolLM2 and Gemma 3: the prefill rate of a ~1,500-token raw prompt (unique each time, so nothing
is cached; ``prompt_eval_count ÷`` the client's time to the first token) and the decode rate of the
256 tokens that follow it (tokens ÷ (last − first token time)), and the decode rate of 128 tokens after
a short prompt. Each round runs a daemon with ``on`` and one with ``off`` in turn (the order alternates
by round); medians over ``BENCH_ROUNDS`` (default 3); ratio = off ÷ on (> 1: off is faster).
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time

import aiohttp

from benchmarks.harness import GEMMA3, LONG_PROMPT_SENTENCES, SMOLLM2, TEXT, create_model, daemon, stream


async def _one(url: str, model: str, prompt: str, tokens: int) -> dict:
    body = {"model": model, "prompt": prompt, "raw": True,
            "options": {"temperature": 0, "num_predict": tokens, "num_ctx": 4096}}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None)) as session:
        result = await stream(session, url, "/api/generate", body)
    return {"prefill": result.final["prompt_eval_count"] / max(result.ttft, 1e-9), "decode": result.decode_rate}


def _measure(mode: str) -> dict:
    out = {}
    with daemon(LLMHOST_NUM_PARALLEL="1", LLMHOST_FLASH_ATTENTION=mode) as d:
        for model, path in (("smollm2", SMOLLM2), ("gemma3", GEMMA3)):
            asyncio.run(create_model(d.url, model, path))
            asyncio.run(_one(d.url, model, "Hello", 2))  # load
            long = asyncio.run(_one(d.url, model, f"[{time.time()}] " + TEXT * LONG_PROMPT_SENTENCES, 256))
            short = asyncio.run(_one(d.url, model, f"[{time.time()}] Once upon a time", 128))
            out[model] = {"prefill_1500": long["prefill"], "decode_after_1500": long["decode"],
                          "decode_short": short["decode"]}
    return out


def flash() -> dict:
    rounds = int(os.environ.get("BENCH_ROUNDS", "3"))
    runs: dict[str, list[dict]] = {"on": [], "off": []}
    for r in range(rounds):
        for mode in (("on", "off") if r % 2 == 0 else ("off", "on")):
            runs[mode].append(_measure(mode))
    out: dict = {"rounds": rounds}
    for model in ("smollm2", "gemma3"):
        for metric in ("prefill_1500", "decode_after_1500", "decode_short"):
            on = statistics.median(x[model][metric] for x in runs["on"])
            off = statistics.median(x[model][metric] for x in runs["off"])
            out[f"{model}.{metric}"] = {"on": on, "off": off, "ratio_off_on": off / on}
    return out
