"""What idle cached prompts cost the requests that run beside them, with and without parking them in
host memory (``scripts/bench idle``).

The KV cache keeps every finished prompt for reuse, and llama.cpp attends over every cell up to the
highest one in use, masked or not. With ``LLMHOST_KV_HOST_CACHE`` (default auto) each admission parks
the idle prompts in host memory and frees their cells; with ``off`` they stay in the KV cache. So each
round, for each setting, in a fresh daemon with 4 slots, for SmolLM2 and Gemma 3: a 128-token reply to
a short prompt and a unique ~1,500-token prompt are timed with nothing else cached, then again beside
three idle ~1,500-token prompts; last, a request that continues one of those idle prompts is timed at
the client (its time to the first token: with parking, the cells are copied back first). Decode rates
are the runner's own (``eval_count ÷ eval_duration``); prefill rates are prompt tokens ÷ the one-token
request's wall time at the client, so that parking's copies count; medians over ``BENCH_ROUNDS``
(default 3); ratio = beside ÷ alone (< 1: the idle prompts slow it).
"""

from __future__ import annotations

import json
import os
import statistics
import time
import urllib.request

from benchmarks.harness import GEMMA3, LONG_PROMPT_SENTENCES, SMOLLM2, TEXT, create_model, daemon, run


def _final(url: str, model: str, prompt: str, tokens: int) -> dict:
    body = {"model": model, "prompt": prompt, "raw": True, "stream": False,
            "options": {"temperature": 0, "num_predict": tokens, "num_ctx": 4096}}
    request = urllib.request.Request(url + "/api/generate", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=600) as response:
        return json.loads(response.read())


def _unload(url: str, model: str) -> None:
    body = {"model": model, "prompt": "", "keep_alive": 0}
    request = urllib.request.Request(url + "/api/generate", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        response.read()


def _rates(url: str, model: str) -> dict[str, float]:
    def unique(text: str) -> str:
        return f"[{time.time_ns()}] {text}"

    def decode() -> float:
        final = _final(url, model, unique("Once upon a time, in a lighthouse by the sea,"), 128)
        return final["eval_count"] / (final["eval_duration"] / 1e9)

    def prefill(prompt: str) -> float:
        """Prompt tokens ÷ the request's wall time at the client (so parking's copies count)."""
        started = time.perf_counter()
        final = _final(url, model, prompt, 1)
        return final["prompt_eval_count"] / (time.perf_counter() - started)

    out = {"decode_alone": decode(), "prefill_alone": prefill(unique(TEXT * LONG_PROMPT_SENTENCES))}
    # One of the idle prompts, continued at the end. Without the trailing space, whose token Gemma's
    # tokenizer merges with the next word: the continuation then holds every token of this prompt,
    # as a chat's next turn does (a sliding-window model's parked prompt is of use only so).
    kept = unique(TEXT * LONG_PROMPT_SENTENCES).rstrip()
    prefill(kept)
    prefill(unique(TEXT * LONG_PROMPT_SENTENCES))  # with the first one, three idle long prompts
    out["prefill_beside_3"] = prefill(unique(TEXT * LONG_PROMPT_SENTENCES))  # the LRU slot gives way
    out["decode_beside_3"] = decode()
    started = time.perf_counter()
    final = _final(url, model, kept + " What happened next?", 1)
    out["continue_ttft_ms"] = (time.perf_counter() - started) * 1e3
    # Served from the cache when it took well under what evaluating the whole prompt takes.
    out["continue_cached"] = out["continue_ttft_ms"] / 1e3 < 0.25 * final["prompt_eval_count"] / out["prefill_alone"]
    return out


SETTINGS = ("off", "auto")  # LLMHOST_KV_HOST_CACHE


def idle() -> dict:
    rounds = int(os.environ.get("BENCH_ROUNDS", "3"))
    runs: dict[tuple[str, str], list[dict[str, float]]] = {}
    for _ in range(rounds):
        for setting in SETTINGS:
            with daemon(LLMHOST_NUM_PARALLEL="4", LLMHOST_KV_HOST_CACHE=setting) as d:
                for model, path in (("smollm2", SMOLLM2), ("gemma3", GEMMA3)):
                    run(create_model(d.url, model, path))
                    _final(d.url, model, "Hello", 2)  # load
                    runs.setdefault((setting, model), []).append(_rates(d.url, model))
                    _unload(d.url, model)  # its runner goes: the next model's cache starts empty

    out: dict = {"rounds": rounds}
    for (setting, model), results in runs.items():
        row: dict = {}
        for what in ("decode", "prefill"):
            alone = statistics.median(r[f"{what}_alone"] for r in results)
            beside = statistics.median(r[f"{what}_beside_3"] for r in results)
            row[what] = {"alone": alone, "beside_3_idle": beside, "ratio": beside / alone}
        row["continue_ttft_ms"] = statistics.median(r["continue_ttft_ms"] for r in results)
        row["continue_cached"] = all(r["continue_cached"] for r in results)
        out[f"{model}.host_cache_{setting}"] = row
    return out
