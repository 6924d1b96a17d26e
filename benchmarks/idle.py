"""What idle cached prompts cost the requests that run beside them (``scripts/bench idle``).

The KV cache keeps every finished prompt for reuse, in one pool, and llama.cpp attends over every cell
up to the highest one in use, masked or not. So each round, in a fresh daemon with 4 slots, for
SmolLM2 and Gemma 3: a 128-token reply to a short prompt and a unique ~1,500-token prompt are timed
with nothing else cached, then again beside three idle ~1,500-token prompts. Rates are the runner's
own (``eval_count ÷ eval_duration``, ``prompt_eval_count ÷ prompt_eval_duration``); medians over
``BENCH_ROUNDS`` (default 3); ratio = beside ÷ alone (< 1: the idle prompts slow it).
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

    def prefill() -> float:
        final = _final(url, model, unique(TEXT * LONG_PROMPT_SENTENCES), 1)
        return final["prompt_eval_count"] / (final["prompt_eval_duration"] / 1e9)

    out = {"decode_alone": decode(), "prefill_alone": prefill()}
    for _ in range(2):  # with the one just made, three idle long prompts
        prefill()
    out["prefill_beside_3"] = prefill()  # the least recently used slot gives way: three stay
    out["decode_beside_3"] = decode()
    return out


def idle() -> dict:
    rounds = int(os.environ.get("BENCH_ROUNDS", "3"))
    runs: dict[str, list[dict[str, float]]] = {"smollm2": [], "gemma3": []}
    for _ in range(rounds):
        with daemon(LLMHOST_NUM_PARALLEL="4") as d:
            for model, path in (("smollm2", SMOLLM2), ("gemma3", GEMMA3)):
                run(create_model(d.url, model, path))
                _final(d.url, model, "Hello", 2)  # load
                runs[model].append(_rates(d.url, model))
                _unload(d.url, model)  # its runner goes: the next model's cache starts empty

    out: dict = {"rounds": rounds}
    for model, results in runs.items():
        for what in ("decode", "prefill"):
            alone = statistics.median(r[f"{what}_alone"] for r in results)
            beside = statistics.median(r[f"{what}_beside_3"] for r in results)
            out[f"{model}.{what}"] = {"alone": alone, "beside_3_idle": beside, "ratio": beside / alone}
    return out
