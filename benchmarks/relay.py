"""The per-token budget: CPU time each process spends per streamed token, and where the daemon's goes.

One SmolLM2 stream of ``BENCH_RELAY_TOKENS`` (default 512) greedy tokens through ``/api/generate``,
``/api/chat`` and ``/v1/chat/completions``; for each, the CPU time (user + system, from
``/proc/<pid>/stat``) the runner, the daemon and the client used over the stream, divided by the
tokens, and the wall time per token. The runner's figure includes llama.cpp's compute threads;
``runner_loop_us`` is its main thread alone (the event loop: requests, and whatever part of a stream
the engine thread does not write itself). The daemon's and the client's are the relay: reading a
line, converting it, writing a chunk.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import time
import urllib.request

from benchmarks.harness import SMOLLM2, create_model, daemon, run

CLOCK = os.sysconf("SC_CLK_TCK")
PROMPT = "Write a long story about a lighthouse keeper and a storm."


def _cpu_seconds(pid: int, tid: int | None = None) -> float:
    """CPU time of process ``pid``, or of its thread ``tid``."""
    with open(f"/proc/{pid}/task/{tid}/stat" if tid is not None else f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK  # utime, stime


def _client_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _stream(url: str, path: str, body: dict) -> int:
    """Stream a request with the standard library (a lean client); the chunks received."""
    request = urllib.request.Request(url + path, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    chunks = 0
    with urllib.request.urlopen(request, timeout=600) as resp:
        for line in resp:
            if line.strip() and line.strip() != b"data: [DONE]":
                chunks += 1
    return chunks


def _bodies(tokens: int) -> dict[str, tuple[str, dict]]:
    options = {"temperature": 0, "seed": 1, "num_predict": tokens}
    messages = [{"role": "user", "content": PROMPT}]
    return {
        "generate": ("/api/generate", {"model": "smol", "prompt": PROMPT, "options": options}),
        "chat": ("/api/chat", {"model": "smol", "messages": messages, "options": options}),
        "openai": ("/v1/chat/completions", {"model": "smol", "messages": messages, "stream": True,
                                            "max_tokens": tokens, "temperature": 0, "seed": 1}),
    }


def relay() -> dict:
    tokens = int(os.environ.get("BENCH_RELAY_TOKENS", "512"))
    rounds = int(os.environ.get("BENCH_ROUNDS", "3"))
    out: dict = {"tokens": tokens, "rounds": rounds}
    with daemon(LLMHOST_NUM_PARALLEL="1") as d:
        run(create_model(d.url, "smol", SMOLLM2))
        bodies = _bodies(tokens)
        _stream(d.url, *bodies["generate"])  # load, and warm every path once
        runner = d.runner_pids()[0]
        for name, (path, body) in bodies.items():
            per: dict[str, list[float]] = {"runner_us": [], "runner_loop_us": [], "daemon_us": [], "client_us": [],
                                           "wall_us": []}
            for _ in range(rounds):
                before = (_cpu_seconds(runner), _cpu_seconds(runner, runner), _cpu_seconds(d.proc.pid), _client_cpu(),
                          time.perf_counter())
                chunks = _stream(d.url, path, body)
                after = (_cpu_seconds(runner), _cpu_seconds(runner, runner), _cpu_seconds(d.proc.pid), _client_cpu(),
                         time.perf_counter())
                n = max(chunks - 1, 1)  # the final chunk (or usage) carries no token
                for key, b, a in zip(per, before, after, strict=True):
                    per[key].append((a - b) / n * 1e6)
            out[name] = {key: statistics.median(values) for key, values in per.items()}
            print({name: out[name]}, flush=True)
    return out
