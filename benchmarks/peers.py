"""llmhost and llama.cpp's ``llama-server``, side by side (docs/benchmarks.md, "Peers, side by side").

Both serve the same model file with the same threads, slots and KV pool, through their OpenAI-compatible
``/v1`` routes, one server at a time: each round starts one, measures a workload, stops it, then the
other (the order alternates by round). Each workload prints one JSON line: both sides' medians over the
rounds, their ratio oriented so that > 1 means llmhost is better, and the spread of the per-round ratios.

``BENCH_ROUNDS`` (default 3), ``BENCH_PEERS_WORKLOADS=a,b`` (default: all), ``BENCH_PEERS_TOKENS``
(decode length, default 128), ``BENCH_PEERS_TURNS`` (conversation turns, default 6) shorten smoke runs.
On a GPU: ``CMAKE_ARGS=-DGGML_CUDA=on`` builds llama-server with the backend the runner's wheel was
built with (``scripts/setup`` reads the same variable; each set of flags has its own cached build),
and ``BENCH_GPU_LAYERS=999`` offloads every layer on both sides.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import aiohttp

from benchmarks import llama_server
from benchmarks.harness import GEMMA3, LONG_PROMPT_SENTENCES, SMOLLM2, TEXT, THREADS, create_model, daemon
from benchmarks.throughput import QUESTIONS, SYSTEM

NUM_CTX = 4096  # per slot: llmhost's default num_ctx; llama-server gets slots × this in one pool
NUM_BATCH = 512  # llmhost's default num_batch (llama-server's -b would be 2048)
GREEDY = {"temperature": 0, "seed": 42}
TIMEOUT = aiohttp.ClientTimeout(total=None, sock_read=900)
TOPICS = ["fly", "swim", "cook", "sing", "paint", "read", "dance", "sail"]
STORY = "Write a long story about a dragon who learns to {}."
PREFILL_SENTENCES = LONG_PROMPT_SENTENCES  # ~1,500 Gemma 3 tokens with the tag and BOS


@dataclass(frozen=True)
class Side:
    """One server under test, as a workload talks to it."""

    name: str  # "llmhost" or "llama_server"
    url: str
    model: str
    extra: dict = field(default_factory=dict)  # body fields only this side takes (llama-server's cache_prompt)


@dataclass(frozen=True)
class Metric:
    key: str
    unit: str
    higher_is_better: bool = True


@dataclass(frozen=True)
class Workload:
    """A measurement run the same way against each side; ``measure`` returns metric values and
    ``check`` values (what both sides did, to show they did the same work)."""

    name: str
    model: Path
    parallel: int
    measure: Callable[[aiohttp.ClientSession, Side, int], Awaitable[dict]]
    metrics: tuple[Metric, ...]
    raw: bool = False  # a base model: /v1/completions with the prompt as given on both sides
    embeddings: bool = False
    cold: bool = False  # llama-server is told not to reuse cached prompts (llmhost's prompts share no prefix)


@dataclass
class Reply:
    """A streamed /v1 answer as the client saw it."""

    started: float
    first: float | None = None
    last: float | None = None
    chunks: int = 0
    text: str = ""
    usage: dict = field(default_factory=dict)

    @property
    def ttft(self) -> float:
        return (self.first or self.last or self.started) - self.started

    @property
    def completion_tokens(self) -> int:
        return self.usage.get("completion_tokens", self.chunks)

    @property
    def decode_rate(self) -> float:
        """Tokens per second from the first token to the last, as the client sees them."""
        if self.first is None or self.last is None or self.completion_tokens < 2:
            return 0.0
        return (self.completion_tokens - 1) / max(self.last - self.first, 1e-9)


async def sse(s: aiohttp.ClientSession, side: Side, path: str, body: dict) -> Reply:
    """POST a streaming /v1 request; time the chunks that carry text, keep the usage."""
    body = {**body, "model": side.model, "stream": True, "stream_options": {"include_usage": True}, **side.extra}
    reply = Reply(started=time.perf_counter())
    async with s.post(side.url + path, json=body) as resp:
        if resp.status != 200:
            raise RuntimeError(f"{side.name} {path}: HTTP {resp.status}: {await resp.text()}")
        async for line in resp.content:
            if not line.startswith(b"data:"):
                continue
            payload = line[5:].strip()
            if payload == b"[DONE]":
                break
            _take_chunk(reply, json.loads(payload), side)
    return reply


def _take_chunk(reply: Reply, chunk: dict, side: Side) -> None:
    if "error" in chunk:
        raise RuntimeError(f"{side.name}: {chunk['error']}")
    if chunk.get("usage"):
        reply.usage = chunk["usage"]
    for choice in chunk.get("choices") or []:
        text = choice.get("text") or (choice.get("delta") or {}).get("content") or ""
        if text:
            now = time.perf_counter()
            reply.first = reply.first or now
            reply.last = now
            reply.chunks += 1
            reply.text += text


# Workloads -----------------------------------------------------------------------------------------


def _chat(content: str, tokens: int) -> dict:
    return {"messages": [{"role": "user", "content": content}], "max_tokens": tokens, **GREEDY}


async def single_decode(s: aiohttp.ClientSession, side: Side, r: int, *, raw: bool = False) -> dict:
    """Greedy, ``BENCH_PEERS_TOKENS`` (128) tokens streamed; the median of 3 requests."""
    tokens = _env_int("BENCH_PEERS_TOKENS", 128)
    if raw:
        path, body = "/v1/completions", {"prompt": TEXT, "max_tokens": tokens, **GREEDY}
    else:
        path, body = "/v1/chat/completions", _chat(STORY.format("fly"), tokens)
    replies = [await sse(s, side, path, body) for _ in range(3)]
    return {"tok_s": statistics.median(x.decode_rate for x in replies),
            "check": {"completion_tokens": replies[0].completion_tokens,
                      "prompt_tokens": replies[0].usage.get("prompt_tokens")}}


async def aggregate_decode(s: aiohttp.ClientSession, side: Side, r: int) -> dict:
    """8 greedy streams with different prompts at once: Σ completion tokens ÷ wall time."""
    tokens = _env_int("BENCH_PEERS_TOKENS", 128)
    started = time.perf_counter()
    replies = await asyncio.gather(*(sse(s, side, "/v1/chat/completions", _chat(STORY.format(t), tokens))
                                     for t in TOPICS))
    wall = time.perf_counter() - started
    generated = sum(x.completion_tokens for x in replies)
    return {"tok_s": generated / wall, "check": {"completion_tokens": generated}}


def _prefill_prompt(side: Side, r: int, i: int) -> str:
    """A prompt no earlier one shares a prefix with (the tag comes first)."""
    return f"[{side.name} round {r} prompt {i}] " + TEXT * PREFILL_SENTENCES


async def cold_prefill(s: aiohttp.ClientSession, side: Side, r: int, *, n: int) -> dict:
    """``n`` distinct ~1,500-token raw prompts at once, one token each: Σ prompt tokens ÷ time to the
    last first token."""
    started = time.perf_counter()
    replies = await asyncio.gather(*(sse(s, side, "/v1/completions",
                                         {"prompt": _prefill_prompt(side, r, i), "max_tokens": 1, **GREEDY})
                                     for i in range(n)))
    done = max(x.first or x.last or time.perf_counter() for x in replies) - started
    tokens = sum(x.usage.get("prompt_tokens", 0) for x in replies)
    return {"tok_s": tokens / done, "check": {"prompt_tokens": tokens}}


EMBED_INPUTS = [f"Question {i}: {QUESTIONS[i % len(QUESTIONS)]}" for i in range(64)]


async def embed_batch(s: aiohttp.ClientSession, side: Side, r: int) -> dict:
    """64 short inputs in one /v1/embeddings request: inputs ÷ wall time; the median of 3."""
    rates, first = [], None
    for _ in range(3):
        started = time.perf_counter()
        async with s.post(side.url + "/v1/embeddings", json={"model": side.model, "input": EMBED_INPUTS}) as resp:
            if resp.status != 200:
                raise RuntimeError(f"{side.name} /v1/embeddings: HTTP {resp.status}: {await resp.text()}")
            data = (await resp.json())["data"]
        rates.append(len(data) / (time.perf_counter() - started))
        first = data[0]["embedding"]
    return {"inputs_s": statistics.median(rates), "check": {"vector": first}}


async def conversations(s: aiohttp.ClientSession, side: Side, r: int, n: int = 8) -> dict:
    """``n`` conversations × ``BENCH_PEERS_TURNS`` (6) turns in lock-step with a shared system prompt,
    48-token greedy replies, the whole history resent each turn (throughput.p3's workload through /v1)."""
    histories = [[{"role": "system", "content": SYSTEM}] for _ in range(n)]
    ttfts: list[list[float]] = []
    tokens = 0
    first_prompts = 0
    started = time.perf_counter()
    for turn in range(_env_int("BENCH_PEERS_TURNS", 6)):
        for c, history in enumerate(histories):
            history.append({"role": "user", "content": QUESTIONS[(c + turn) % len(QUESTIONS)]})
        replies = await asyncio.gather(*(sse(s, side, "/v1/chat/completions",
                                             {"messages": h, "max_tokens": 48, **GREEDY}) for h in histories))
        ttfts.append([x.ttft for x in replies])
        first_prompts = first_prompts or sum(x.usage.get("prompt_tokens", 0) for x in replies)
        for history, reply in zip(histories, replies):
            history.append({"role": "assistant", "content": reply.text})
            tokens += reply.completion_tokens
    later = [t for turn in ttfts[1:] for t in turn] or ttfts[0]
    return {"wall_s": time.perf_counter() - started, "ttft_turn1_s": statistics.median(ttfts[0]),
            "ttft_later_s": statistics.median(later), "ttft_later_mean_s": statistics.fmean(later),
            "check": {"turn1_prompt_tokens": first_prompts, "completion_tokens": tokens}}


def _workloads() -> dict[str, Workload]:
    tok_s, prompt_tok_s = (Metric("tok_s", "tok/s"),), (Metric("tok_s", "prompt tok/s"),)
    return {w.name: w for w in (
        Workload("smollm2_decode", SMOLLM2, 4, single_decode, tok_s),
        Workload("smollm2_aggregate_8", SMOLLM2, 8, aggregate_decode, tok_s),
        Workload("gemma3_decode", GEMMA3, 4, partial(single_decode, raw=True), tok_s, raw=True),
        Workload("gemma3_prefill_1", GEMMA3, 4, partial(cold_prefill, n=1), prompt_tok_s, raw=True, cold=True),
        Workload("gemma3_prefill_4", GEMMA3, 4, partial(cold_prefill, n=4), prompt_tok_s, raw=True, cold=True),
        Workload("smollm2_embed_64", SMOLLM2, 8, embed_batch, (Metric("inputs_s", "inputs/s"),), embeddings=True),
        Workload("smollm2_conversations", SMOLLM2, 8, conversations,
                 (Metric("wall_s", "s", False), Metric("ttft_turn1_s", "s", False), Metric("ttft_later_s", "s", False),
                  Metric("ttft_later_mean_s", "s", False))),
    )}


# Servers -------------------------------------------------------------------------------------------


def gpu_layers() -> int | None:
    """``BENCH_GPU_LAYERS``: layers both sides offload (llmhost's ``num_gpu``, llama-server's
    ``-ngl``; 999 for all); unset: each side's default, which decides by the memory it finds."""
    value = os.environ.get("BENCH_GPU_LAYERS", "").strip()
    return int(value) if value else None


async def _llmhost_models(url: str, w: Workload) -> str:
    """Create the workload's model; a base model gets the template ``{{ .Prompt }}`` so that
    /v1/completions sends the prompt as given, as llama-server does."""
    layers = gpu_layers()
    await create_model(url, "peer", w.model, {"num_gpu": layers} if layers is not None else None)
    if not w.raw:
        return "peer"
    async with aiohttp.ClientSession() as s:
        body = {"model": "peer-raw", "from": "peer", "template": "{{ .Prompt }}", "stream": False}
        async with s.post(url + "/api/create", json=body) as resp:
            if resp.status != 200:
                raise RuntimeError(f"creating peer-raw: {await resp.text()}")
    return "peer-raw"


@contextlib.contextmanager
def llmhost(w: Workload):
    with daemon(LLMHOST_NUM_PARALLEL=str(w.parallel), LLMHOST_CONTEXT_LENGTH=str(NUM_CTX)) as d:
        yield Side("llmhost", d.url, asyncio.run(_llmhost_models(d.url, w)))


@contextlib.contextmanager
def llama(w: Workload):
    with llama_server.serve(w.model, threads=THREADS, parallel=w.parallel, ctx_per_slot=NUM_CTX,
                            batch=NUM_BATCH, embeddings=w.embeddings, gpu_layers=gpu_layers()) as srv:
        yield Side("llama_server", srv.url, "peer", {"cache_prompt": False} if w.cold else {})


async def _measure(w: Workload, side: Side, r: int) -> dict:
    # A connection per request: llama-server's HTTP library may close a kept-alive one after a stream.
    async with aiohttp.ClientSession(timeout=TIMEOUT, connector=aiohttp.TCPConnector(force_close=True)) as s:
        await _warm_up(s, side, w)
        return await w.measure(s, side, r)


async def _warm_up(s: aiohttp.ClientSession, side: Side, w: Workload) -> None:
    """One small request, so that llmhost's runner is loaded before anything is timed."""
    if w.embeddings:
        async with s.post(side.url + "/v1/embeddings", json={"model": side.model, "input": ["warm up"]}) as resp:
            await resp.read()
    elif w.raw:
        await sse(s, side, "/v1/completions", {"prompt": "warm up", "max_tokens": 2, **GREEDY})
    else:
        await sse(s, side, "/v1/chat/completions", _chat("warm up", 2))


# Rounds and summary --------------------------------------------------------------------------------


def _env_int(name: str, default: int) -> int:
    return int(os.environ.get(name) or default)


def _selected() -> list[Workload]:
    workloads = _workloads()
    names = [n.strip() for n in os.environ.get("BENCH_PEERS_WORKLOADS", "").split(",") if n.strip()]
    unknown = [n for n in names if n not in workloads]
    if unknown:
        raise SystemExit(f"unknown peers workload(s): {', '.join(unknown)}; choose from {', '.join(workloads)}")
    return [workloads[n] for n in names] if names else list(workloads.values())


def peers(rounds: int | None = None) -> dict:
    """Every selected workload against both servers, interleaved over ``rounds`` (default
    ``BENCH_ROUNDS``, else 3); one JSON line each."""
    rounds = rounds or _env_int("BENCH_ROUNDS", 3)
    workloads = _selected()
    # A SIGTERM (timeout, CI) unwinds like Ctrl-C, so the server under test is stopped, not orphaned.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    binary = llama_server.binary()  # built (once) before anything is timed
    samples: dict[str, list[dict]] = {w.name: [] for w in workloads}
    for r in range(rounds):
        for w in workloads:
            sides = (llmhost, llama) if r % 2 == 0 else (llama, llmhost)
            pair = {}
            for start in sides:
                with start(w) as side:
                    pair[side.name] = asyncio.run(_measure(w, side, r))
            samples[w.name].append(pair)
    for w in workloads:
        for line in _lines(w, samples[w.name]):
            print(json.dumps(line), flush=True)
    return {"rounds": rounds, "workloads": [w.name for w in workloads], "llama_server": str(binary),
            "llama_server_flags": llama_server.matched_flags(NUM_CTX), "threads": THREADS, "num_ctx_per_slot": NUM_CTX,
            "gpu_layers": gpu_layers(), "cmake_args": llama_server.extra_cmake_flags()}


def _lines(w: Workload, pairs: list[dict]) -> list[dict]:
    lines = []
    for m in w.metrics:
        ours = [p["llmhost"][m.key] for p in pairs]
        theirs = [p["llama_server"][m.key] for p in pairs]
        ratios = [_oriented(a, b, m) for a, b in zip(ours, theirs)]
        name = w.name if len(w.metrics) == 1 else f"{w.name}.{m.key}"
        lines.append({"workload": name, "llmhost": _r(statistics.median(ours)),
                      "llama_server": _r(statistics.median(theirs)),
                      "ratio": _r(_oriented(statistics.median(ours), statistics.median(theirs), m)),
                      "spread": [_r(min(ratios)), _r(max(ratios))], "unit": m.unit,
                      "ratio_is": "llmhost / llama_server" if m.higher_is_better else "llama_server / llmhost",
                      "rounds": len(pairs), "check": _check(pairs[-1])})
    return lines


def _oriented(ours: float, theirs: float, m: Metric) -> float:
    """> 1 means llmhost is better, whichever way the metric points."""
    return ours / theirs if m.higher_is_better else theirs / ours


def _check(pair: dict) -> dict:
    """What each side did in the last round; for embeddings, the cosine between their first vectors."""
    ours, theirs = pair["llmhost"]["check"], pair["llama_server"]["check"]
    if "vector" in ours:
        a, b = ours["vector"], theirs["vector"]
        dot = sum(x * y for x, y in zip(a, b))
        norm = (sum(x * x for x in a) * sum(y * y for y in b)) ** 0.5
        return {"cosine_first_vector": _r(dot / norm, 4), "dims": [len(a), len(b)]}
    return {"llmhost": ours, "llama_server": theirs}


def _r(value: float, digits: int = 3) -> float:
    return round(value, digits)
