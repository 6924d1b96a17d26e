"""What one more process on the token's path costs: llama-server alone, llama-server behind a
pass-through proxy, and llmhost (docs/benchmarks.md, "What a process hop costs").

llmhost streams each token from its runner process through the daemon to the client; llama-server
sends it from its own process. To tell that hop's price from the rest of llmhost's path, the same
``peers`` workload (by default the single-stream decodes: 128 greedy tokens, the median of 3
requests, the rate the client sees) runs against three sides in turn each round, one at a time:

- ``llama_server``: llama-server as ``peers`` starts it;
- ``proxied``: the same llama-server behind a minimal aiohttp process that forwards each chunk of
  the stream as it arrives (no parsing): the least a Python hop can do per token;
- ``llmhost``: the daemon, as ``peers`` starts it.

Each line: the three medians, ``proxied ÷ llama_server`` (what the hop alone costs),
``llmhost ÷ proxied`` (llmhost against a peer that pays for a hop too) and ``llmhost ÷
llama_server``, each as the ratio of the medians, the median of the per-round ratios (``paired``)
and their spread, and the proxy's CPU time per token. Run it with
``BENCH_THREADS=1`` as well: then llama.cpp computes on one core and the relay has the other.
``BENCH_ROUNDS`` (default 5), ``BENCH_HOP_WORKLOADS`` (default ``smollm2_decode,gemma3_decode``; any
``peers`` workload measured as a rate, e.g. ``gemma3_prefill_1``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import aiohttp
from aiohttp import web

from benchmarks import llama_server, peers
from benchmarks.harness import THREADS, free_port
from benchmarks.relay import _cpu_seconds

SIDES = ("llama_server", "proxied", "llmhost")


def hop(rounds: int | None = None) -> dict:
    rounds = rounds or int(os.environ.get("BENCH_ROUNDS") or 5)
    names = [n.strip() for n in (os.environ.get("BENCH_HOP_WORKLOADS") or "smollm2_decode,gemma3_decode").split(",")]
    workloads = {n: w for n, w in peers._workloads().items() if w.metrics[0].higher_is_better}
    unknown = [n for n in names if n not in workloads]
    if unknown:
        raise SystemExit(f"hop: {', '.join(unknown)}: not a peers workload measured as a rate; "
                         f"choose from {', '.join(workloads)}")
    # A SIGTERM unwinds like Ctrl-C, so the servers and the proxy are stopped, not orphaned.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    for name in names:
        rates: dict[str, list[float]] = {s: [] for s in SIDES}
        proxy_cpu: list[float] = []
        for r in range(rounds):
            for side in SIDES[r % 3:] + SIDES[:r % 3]:  # each side goes first in turn
                rate, cpu = _round(workloads[name], side, r)
                rates[side].append(rate)
                if cpu is not None:
                    proxy_cpu.append(cpu)
        print(json.dumps(_line(workloads[name], rates, proxy_cpu)), flush=True)
    return {"rounds": rounds, "workloads": names, "threads": THREADS}


def _round(w: peers.Workload, side: str, r: int) -> tuple[float, float | None]:
    """One side's figure and, behind the proxy on a decode workload, the proxy's CPU ms per token."""
    if side == "llmhost":
        with peers.llmhost(w) as s:
            return asyncio.run(_measure(w, s, r))[0], None
    with peers.llama(w) as s:
        if side == "llama_server":
            return asyncio.run(_measure(w, s, r))[0], None
        with _proxy(s.url) as (url, pid):
            proxied = replace(s, url=url)
            asyncio.run(_measure(w, proxied, r, warm_only=True))  # so that the CPU count covers the measured part
            cpu = _cpu_seconds(pid)
            value, tokens = asyncio.run(_measure(w, proxied, r))
            return value, (_cpu_seconds(pid) - cpu) * 1000 / tokens if tokens else None


async def _measure(w: peers.Workload, side: peers.Side, r: int, *, warm_only: bool = False) -> tuple[float, int]:
    """The workload's figure as ``peers`` measures it, and the tokens it streamed (decode workloads)."""
    async with aiohttp.ClientSession(timeout=peers.TIMEOUT, connector=aiohttp.TCPConnector(force_close=True)) as s:
        await peers._warm_up(s, side, w)
        if warm_only:
            return 0.0, 0
        result = await w.measure(s, side, r)
    decode = peers.single_decode in (w.measure, getattr(w.measure, "func", None))
    streamed = 3 * result["check"]["completion_tokens"] if decode else 0  # single_decode sends three requests
    return result[w.metrics[0].key], streamed


def _line(w: peers.Workload, rates: dict[str, list[float]], proxy_cpu: list[float]) -> dict:
    med = {s: statistics.median(v) for s, v in rates.items()}

    def ratio(a: str, b: str) -> dict:
        per_round = [x / y for x, y in zip(rates[a], rates[b])]
        # The median of the per-round ratios too: each round's sides run minutes apart at most, so
        # pairing them cancels the machine's drift (here the same server's decode rate wandered by
        # up to 25% within minutes).
        return {"ratio": round(med[a] / med[b], 3), "paired": round(statistics.median(per_round), 3),
                "spread": [round(min(per_round), 3), round(max(per_round), 3)]}

    return {"workload": w.name, "unit": w.metrics[0].unit,
            "median": {s: round(v, 2) for s, v in med.items()},
            "proxied/llama_server": ratio("proxied", "llama_server"),
            "llmhost/proxied": ratio("llmhost", "proxied"),
            "llmhost/llama_server": ratio("llmhost", "llama_server"),
            "proxy_cpu_ms_per_token": round(statistics.median(proxy_cpu), 3) if proxy_cpu else None}


@contextlib.contextmanager
def _proxy(upstream: str) -> Iterator[tuple[str, int]]:
    """The pass-through proxy in its own process on a free port; yields its URL and pid. Its
    ``/health`` is the upstream's, so it answers once both listen."""
    port = free_port()
    log = Path(tempfile.mkstemp(prefix="hop-proxy-", suffix=".log")[1])
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "benchmarks.hop", str(port), upstream],
                                stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        llama_server.wait_ready(url, proc, log, name="the hop proxy")
        yield url, proc.pid
    finally:
        proc.terminate()
        proc.wait(15)
        log.unlink(missing_ok=True)


def _proxy_app(upstream: str) -> web.Application:
    """Forward every request to ``upstream`` and every chunk of its answer back as it arrives."""
    session: list[aiohttp.ClientSession] = []

    async def forward(request: web.Request) -> web.StreamResponse:
        if not session:
            session.append(aiohttp.ClientSession(timeout=peers.TIMEOUT))
        body = await request.read()
        async with session[0].request(request.method, upstream + request.path_qs, data=body,
                                      headers={"Content-Type": request.content_type}) as up:
            response = web.StreamResponse(status=up.status, headers={"Content-Type": up.content_type})
            await response.prepare(request)
            # The benchmark's client hangs up after "[DONE]", before the stream's last chunk.
            with contextlib.suppress(ConnectionError):
                async for chunk in up.content.iter_any():
                    await response.write(chunk)
                await response.write_eof()
            return response

    async def close(_app: web.Application) -> None:
        for s in session:
            await s.close()

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", forward)
    app.on_cleanup.append(close)
    return app


if __name__ == "__main__":
    web.run_app(_proxy_app(sys.argv[2]), host="127.0.0.1", port=int(sys.argv[1]), print=None)
