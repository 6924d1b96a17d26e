"""Speculative decoding by prompt lookup (``draft_num_predict``), on and off, side by side.

One daemon; each workload runs with ``draft_num_predict`` 0 and 8 in turn (the order alternates by
round), greedy unless it says otherwise, and prints one JSON line: both decode rates (tokens per second
after the first token, as the client sees the stream), their ratio (> 1: drafting is faster), the draft
tokens tried and accepted (the runner's counters, from /metrics), and whether both texts are equal.

``BENCH_ROUNDS`` (default 3) and ``BENCH_SPEC_WORKLOADS=a,b`` (default: all) shorten smoke runs.
"""

from __future__ import annotations

import asyncio
import os
import re
import statistics

import aiohttp

from benchmarks.harness import GEMMA3, SMOLLM2, create_model, daemon, stream

DRAFT = 8
GREEDY = {"temperature": 0, "seed": 42}
PASSAGE = ("The harbour town woke slowly: gulls argued over the nets, a baker swept flour from his step, and "
           "the ferry's horn rolled across the water twice before the first passengers arrived. By noon the "
           "market square was full of voices, the smell of bread and tar, and children chasing a dog that had "
           "stolen a fish from the nearest stall.")
CODE = '''def total_price(items, tax_rate):
    subtotal = 0
    for item in items:
        subtotal += item["price"] * item["quantity"]
    tax = subtotal * tax_rate
    return subtotal + tax


def cheapest(items):
    best = None
    for item in items:
        if best is None or item["price"] < best["price"]:
            best = item
    return best
'''


def chat(text: str, **options) -> dict:
    return {"messages": [{"role": "user", "content": text}], "options": {**GREEDY, "num_predict": 256, **options}}


# name → (model, request body, concurrent streams)
WORKLOADS: dict[str, tuple[str, dict, int]] = {
    "quote": ("smollm2", chat(f"Repeat this passage exactly, word for word:\n\n{PASSAGE}"), 1),
    "code_edit": ("smollm2", chat(f"Rename the function total_price to order_total in this code and show "
                                  f"the whole code again:\n\n```python\n{CODE}```"), 1),
    "list_continue": ("smollm2", {"prompt": "1, 2, 3, 4, 5, 6, 7, 8, 9, 10,", "raw": True,
                                  "options": {**GREEDY, "num_predict": 256}}, 1),
    "free_story": ("smollm2", chat("Write a long story about a dragon who learns to sail."), 1),
    "free_story_sampled": ("smollm2", chat("Write a long story about a dragon who learns to sail.",
                                           temperature=0.8, seed=7), 1),
    "quote_x4": ("smollm2", chat(f"Repeat this passage exactly, word for word:\n\n{PASSAGE}"), 4),
    "free_story_sampled_x4": ("smollm2", chat("Write a long story about a dragon who learns to sail.",
                                              temperature=0.8, seed=7), 4),
    "gemma3_quote": ("gemma3", {"prompt": f"{PASSAGE}\n\nThe same passage once more:\n\n", "raw": True,
                                "options": {**GREEDY, "num_predict": 128}}, 1),
}


async def _draft_counters(session: aiohttp.ClientSession, url: str) -> tuple[float, float]:
    """(draft tokens tried, accepted) over every runner, from the daemon's /metrics."""
    async with session.get(f"{url}/metrics") as resp:
        text = await resp.text()

    def total(name: str) -> float:
        return sum(float(v) for v in re.findall(rf"^{name}_total{{[^}}]*}} (\S+)$", text, re.M))

    return total("llmhost_draft_tokens"), total("llmhost_draft_tokens_accepted")


async def _measure(url: str, model: str, body: dict, streams: int, draft: int) -> dict:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None)) as session:
        path = "/api/chat" if "messages" in body else "/api/generate"
        request = {**body, "model": model, "options": {**body["options"], "draft_num_predict": draft}}
        before = await _draft_counters(session, url)
        results = await asyncio.gather(*(stream(session, url, path, request) for _ in range(streams)))
        after = await _draft_counters(session, url)
    tokens = sum(r.final.get("eval_count", 0) for r in results)
    first = min(r.first_token or r.started for r in results)
    last = max(r.last_token or r.started for r in results)
    return {"rate": tokens / max(last - first, 1e-9), "tokens": tokens, "text": results[0].text,
            "drafted": after[0] - before[0], "accepted": after[1] - before[1]}


def speculation() -> dict:
    rounds = int(os.environ.get("BENCH_ROUNDS", "3"))
    names = [n for n in os.environ.get("BENCH_SPEC_WORKLOADS", ",".join(WORKLOADS)).split(",") if n]
    out: dict = {"rounds": rounds, "draft_num_predict": DRAFT}
    # One daemon per stream count, with as many slots: a request then always finds the cache as the
    # previous one left it, so the texts of repeated runs can be compared (llama.cpp's sums depend
    # on where cells sit in the KV cache; another slot can give another greedy text).
    for streams in sorted({WORKLOADS[n][2] for n in names}):
        with daemon(LLMHOST_NUM_PARALLEL=str(streams)) as d:
            asyncio.run(create_model(d.url, "smollm2", SMOLLM2))
            asyncio.run(create_model(d.url, "gemma3", GEMMA3))
            for name in (n for n in names if WORKLOADS[n][2] == streams):
                out[name] = _workload(d.url, *WORKLOADS[name], rounds)
                print({name: out[name]}, flush=True)
    return out


def _workload(url: str, model: str, body: dict, streams: int, rounds: int) -> dict:
    for draft in (0, DRAFT):  # load the model, warm its cache, and probe its rows (once per runner)
        asyncio.run(_measure(url, model, body, streams, draft))
    runs: dict[int, list[dict]] = {0: [], DRAFT: []}
    for r in range(rounds):
        for draft in ((0, DRAFT) if r % 2 == 0 else (DRAFT, 0)):
            runs[draft].append(asyncio.run(_measure(url, model, body, streams, draft)))
    off = statistics.median(x["rate"] for x in runs[0])
    on = statistics.median(x["rate"] for x in runs[DRAFT])
    drafted = sum(x["drafted"] for x in runs[DRAFT])
    accepted = sum(x["accepted"] for x in runs[DRAFT])
    off_texts = {x["text"] for x in runs[0]}
    return {
        "tok_s_off": off, "tok_s_on": on, "ratio": on / off,
        "ratios": [a["rate"] / b["rate"] for a, b in zip(runs[DRAFT], runs[0], strict=True)],
        "tokens": runs[DRAFT][0]["tokens"], "drafted": drafted,
        "acceptance": accepted / drafted if drafted else None,
        "off_texts_agree": len(off_texts) == 1,
        "same_text": all(x["text"] in off_texts for x in runs[DRAFT]),
    }
