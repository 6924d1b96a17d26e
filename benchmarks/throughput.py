"""P1 single stream, P2 aggregate under concurrency, P3 multi-turn lock-step with a shared system prompt."""

from __future__ import annotations

import asyncio
import statistics
import time

import aiohttp

from benchmarks import inprocess
from benchmarks.harness import SMOLLM2, THREADS, create_model, daemon, stream

MODEL = "bench-smollm2"
STORY = "<|im_start|>user\nWrite a long story about a dragon who learns to {}.<|im_end|>\n<|im_start|>assistant\n"
GREEDY = {"temperature": 0, "seed": 42}


def p1(repeats: int = 3) -> dict:
    """Single-stream decode tokens/s: daemon (HTTP, streamed) ÷ raw in-process loop."""
    inprocess.silence_logs()
    prompt = STORY.format("fly")
    model = inprocess.load_model(SMOLLM2)
    raw = [inprocess.raw_loop(SMOLLM2, prompt, 128, THREADS, model=model)["rate"] for _ in range(repeats)]
    inprocess.L.llama_model_free(model)
    high = inprocess.high_level(SMOLLM2, prompt, 128, THREADS)["rate"]

    async def through_daemon(url: str) -> list[float]:
        await create_model(url, MODEL, SMOLLM2)
        body = {"model": MODEL, "prompt": prompt, "raw": True, "options": {**GREEDY, "num_predict": 128}}
        rates = []
        async with aiohttp.ClientSession() as s:
            await stream(s, url, "/api/generate", body)  # warm-up: load the model
            for _ in range(repeats):
                rates.append((await stream(s, url, "/api/generate", body)).decode_rate)
        return rates

    with daemon() as d:
        served = asyncio.run(through_daemon(d.url))
    result = {
        "daemon_tok_s": statistics.median(served),
        "inprocess_raw_tok_s": statistics.median(raw),
        "inprocess_create_completion_tok_s": high,
    }
    result["ratio_daemon_vs_raw"] = result["daemon_tok_s"] / result["inprocess_raw_tok_s"]
    return result


def p2(levels=(1, 2, 4, 8)) -> dict:
    """Aggregate tokens/s at N concurrent 128-token requests (parallel slots = 8)."""
    topics = ["fly", "swim", "cook", "sing", "paint", "read", "dance", "sail"]

    async def level(s, url: str, n: int) -> float:
        bodies = [{"model": MODEL, "prompt": STORY.format(topics[i % 8]), "raw": True,
                   "options": {"temperature": 0.7, "seed": i, "num_predict": 128}} for i in range(n)]
        started = time.perf_counter()
        results = await asyncio.gather(*(stream(s, url, "/api/generate", b) for b in bodies))
        wall = time.perf_counter() - started
        return sum(r.final.get("eval_count", r.tokens) for r in results) / wall

    async def run(url: str) -> dict:
        await create_model(url, MODEL, SMOLLM2)
        async with aiohttp.ClientSession() as s:
            await stream(s, url, "/api/generate", {"model": MODEL, "prompt": "hi", "raw": True,
                                                   "options": {"num_predict": 2}})
            return {f"aggregate_tok_s_at_{n}": await level(s, url, n) for n in levels}

    with daemon(LLMHOST_NUM_PARALLEL="8") as d:
        result = asyncio.run(run(d.url))
    result["ratio_8_vs_1"] = result["aggregate_tok_s_at_8"] / result["aggregate_tok_s_at_1"]
    return result


SYSTEM = (
    "You are a meticulous assistant for a small public library. You answer questions about opening "
    "hours, borrowing rules, late fees, events for children and adults, the reading room, printing, "
    "wifi access, accessibility, donations and volunteering. Be concise and friendly. When you do not "
    "know something, say so and suggest asking the front desk. Opening hours: Monday to Friday 9am to "
    "8pm, Saturday 10am to 6pm, closed on Sunday. Books may be borrowed for three weeks and renewed "
    "twice unless reserved. Late fees are 20 cents per day per item, capped at 5 dollars. DVDs are lent "
    "for one week. Printing costs 10 cents per page in black and white and 50 cents in colour. The "
    "children's story hour is every Wednesday at 4pm. The reading room is silent. Wifi is free; the "
    "password is at the front desk. Wheelchair access is through the east entrance."
)
QUESTIONS = ["When do you open on Saturday?", "How long can I keep a DVD?", "What does colour printing cost?",
             "Is there a story hour?", "Can I renew a book?", "Where is the accessible entrance?",
             "Is the wifi free?", "What are the late fees?"]


def p3(conversations: int = 8, turns: int = 6) -> dict:
    """8 conversations × 6 turns in lock-step, each request resending the whole history."""

    async def run(url: str) -> dict:
        await create_model(url, MODEL, SMOLLM2)
        histories = [[{"role": "system", "content": SYSTEM}] for _ in range(conversations)]
        evaluated = cached = new = 0
        previous: list[tuple[int, int] | None] = [None] * conversations
        shared = _system_prefix_tokens()
        ttft_by_turn: list[list[float]] = []
        started = time.perf_counter()
        async with aiohttp.ClientSession() as s:
            for turn in range(turns):
                for c, history in enumerate(histories):
                    history.append({"role": "user", "content": QUESTIONS[(c + turn) % len(QUESTIONS)]})
                bodies = [{"model": MODEL, "messages": h,
                           "options": {"temperature": 0, "seed": 1, "num_predict": 48}} for h in histories]
                results = await asyncio.gather(*(stream(s, url, "/api/chat", b) for b in bodies))
                ttft_by_turn.append([r.ttft for r in results])
                for c, (history, r) in enumerate(zip(histories, results)):
                    # prompt_eval_count is the whole prompt (Ollama's meaning), the cached part included
                    total = r.final.get("prompt_eval_count", 0)
                    evaluated += total - r.final.get("prompt_cached_count", 0)
                    cached += r.final.get("prompt_cached_count", 0)
                    if previous[c] is None:  # only the first conversation's system prompt is new
                        new += total if c == 0 else total - shared
                    else:  # the previous prompt and reply are already in the cache
                        new += total - previous[c][0] - previous[c][1]
                    previous[c] = (total, r.final.get("eval_count", 0))
                    history.append({"role": "assistant", "content": r.text})
        wall = time.perf_counter() - started
        return {"wall_s": wall, "prompt_tokens_evaluated": evaluated, "prompt_tokens_cached": cached,
                "prompt_tokens_new": new, "evaluated_vs_new": evaluated / max(new, 1),
                "ttft_first_turn_median_s": statistics.median(ttft_by_turn[0]),
                "ttft_last_turn_median_s": statistics.median(ttft_by_turn[-1])}

    with daemon(LLMHOST_NUM_PARALLEL="8") as d:
        result = asyncio.run(run(d.url))
    result["ttft_ratio_last_vs_first"] = result["ttft_last_turn_median_s"] / result["ttft_first_turn_median_s"]
    return result


def _system_prefix_tokens() -> int:
    """Tokens of the rendered system turn that every conversation shares (ChatML, as SmolLM2 uses)."""
    inprocess.silence_logs()
    model = inprocess.load_model(SMOLLM2)
    vocab = inprocess.L.llama_model_get_vocab(model)
    n = len(inprocess.tokenize(vocab, f"<|im_start|>system\n{SYSTEM}<|im_end|>\n"))
    inprocess.L.llama_model_free(model)
    return n
