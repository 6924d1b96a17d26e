"""P4 cold start to first token, P7 memory estimate vs measured resident memory."""

from __future__ import annotations

import asyncio
import statistics
import time
from pathlib import Path

import aiohttp

from benchmarks import inprocess
from benchmarks.harness import GEMMA3, SMOLLM2, THREADS, create_model, daemon, stream

PROMPT = "<|im_start|>user\nHello!<|im_end|>\n<|im_start|>assistant\n"


def p4(repeats: int = 3) -> dict:
    """First token of an unloaded model through the daemon ÷ in-process load + first token."""
    inprocess.silence_logs()
    baseline = statistics.median(inprocess.cold_first_token(SMOLLM2, PROMPT, THREADS) for _ in range(repeats))

    async def run(url: str) -> list[float]:
        await create_model(url, "cold", SMOLLM2)
        times = []
        async with aiohttp.ClientSession() as s:
            for _ in range(repeats):
                body = {"model": "cold", "prompt": PROMPT, "raw": True, "keep_alive": 0,
                        "options": {"num_predict": 1, "temperature": 0}}
                result = await stream(s, url, "/api/generate", body)
                times.append(result.ttft)
                await _wait_unloaded(s, url)
        return times

    with daemon() as d:
        served = statistics.median(asyncio.run(run(d.url)))
    return {"daemon_cold_ttft_s": served, "inprocess_cold_ttft_s": baseline, "ratio": served / baseline}


async def _wait_unloaded(s: aiohttp.ClientSession, url: str) -> None:
    for _ in range(100):
        async with s.get(url + "/api/ps") as r:
            if not (await r.json())["models"]:
                return
        await asyncio.sleep(0.05)


def _runner_rss(daemon_pid: int) -> int:
    """Resident bytes of the daemon's (only) runner child."""
    for child in Path(f"/proc/{daemon_pid}/task/{daemon_pid}/children").read_text().split():
        status = Path(f"/proc/{child}/status").read_text()
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no runner process found")


def p7(contexts=(2048, 8192)) -> dict:
    """Estimate ÷ measured RSS after the first decode, for both test models and two num_ctx values."""
    from llmhost.daemon.memory import estimate
    from llmhost.registry.gguf_meta import read_gguf_info

    results = {}

    async def measure(d, name: str, num_ctx: int) -> int:
        async with aiohttp.ClientSession() as s:
            await stream(s, d.url, "/api/generate", {"model": name, "prompt": "Hello", "raw": True,
                                                     "keep_alive": "10m",
                                                     "options": {"num_ctx": num_ctx, "num_predict": 4}})
            rss = _runner_rss(d.proc.pid)
            await stream(s, d.url, "/api/generate", {"model": name, "prompt": "", "keep_alive": 0})
            await _wait_unloaded(s, d.url)
            return rss

    with daemon(LLMHOST_NUM_PARALLEL="4") as d:
        for label, path in (("smollm2", SMOLLM2), ("gemma3", GEMMA3)):
            asyncio.run(create_model(d.url, label, path))
            info = read_gguf_info(path)
            for num_ctx in contexts:
                measured = asyncio.run(measure(d, label, num_ctx))
                estimated = estimate(info, num_ctx, 4, 512)
                results[f"{label}_ctx{num_ctx}"] = {"estimate_mib": estimated / 2**20,
                                                    "measured_mib": measured / 2**20,
                                                    "ratio": estimated / measured}
                time.sleep(0.2)
    return results
