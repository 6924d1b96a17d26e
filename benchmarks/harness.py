"""A daemon in a temporary store, a model created in it, and a timed streaming client."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

# The test models and the daemon launcher are the tests' (run as ``python -m benchmarks`` from the root).
from tests.support.daemon_process import LiveDaemon, free_port, running_daemon
from tests.support.models import GEMMA3, MODELS, ROOT, SMOLLM2

__all__ = ["GEMMA3", "LONG_PROMPT_SENTENCES", "MODELS", "ROOT", "SMOLLM2", "TEXT", "THREADS", "create_model", "daemon",
           "free_port", "stream"]

THREADS = int(os.environ.get("BENCH_THREADS", "2"))
# One sentence of filler text that the long-prompt workloads repeat (39 times: ~1,500 tokens).
TEXT = ("The harbour town woke slowly: gulls argued over the nets, a baker swept flour from his step, "
        "and the ferry's horn rolled across the water twice before the first passengers arrived. ")
LONG_PROMPT_SENTENCES = 39


@contextlib.contextmanager
def daemon(**env_overrides: str) -> Iterator[LiveDaemon]:
    """A daemon on a free port with its own store, a spare runner and long keep-alive; stopped afterwards."""
    workdir = Path(tempfile.mkdtemp(prefix="llmhost-bench-"))
    env = {
        "LLMHOST_NUM_THREADS": str(THREADS),
        "LLMHOST_KEEP_ALIVE": "30m",
        "LLMHOST_SPARE_RUNNER": "1",  # a runner process kept ready for the next load (P4)
        **env_overrides,
    }
    with running_daemon(workdir, env) as started:
        yield started
    # Each run copies the model into its store (~100–350 MB); a failed run keeps it, with its log.
    shutil.rmtree(workdir, ignore_errors=True)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


async def create_model(url: str, name: str, gguf: Path, parameters: dict | None = None) -> None:
    """Upload ``gguf`` as a blob and create ``name`` from it, as ``llm create`` does."""
    digest = sha256_file(gguf)
    async with aiohttp.ClientSession() as s:
        async with s.head(f"{url}/api/blobs/{digest}") as r:
            exists = r.status == 200
        if not exists:
            with open(gguf, "rb") as f:
                async with s.post(f"{url}/api/blobs/{digest}", data=f) as r:
                    assert r.status in (200, 201), await r.text()
        body = {"model": name, "files": {gguf.name: digest}, "stream": False}
        if parameters:
            body["parameters"] = parameters
        async with s.post(f"{url}/api/create", json=body) as r:
            assert r.status == 200, await r.text()


@dataclass
class StreamResult:
    tokens: int = 0
    started: float = 0.0
    first_token: float | None = None
    last_token: float | None = None
    final: dict = field(default_factory=dict)
    text: str = ""

    @property
    def ttft(self) -> float:
        return (self.first_token or self.last_token or self.started) - self.started

    @property
    def decode_rate(self) -> float:
        """Tokens per second after the first token (the steady decode rate the client sees)."""
        tokens = self.final.get("eval_count", self.tokens)
        if self.first_token is None or self.last_token is None or tokens < 2:
            return 0.0
        return (tokens - 1) / max(self.last_token - self.first_token, 1e-9)


async def stream(session: aiohttp.ClientSession, url: str, path: str, body: dict) -> StreamResult:
    """POST a streaming request; count chunks (one per token) and time them."""
    result = StreamResult(started=time.perf_counter())
    async with session.post(url + path, json=body) as resp:
        assert resp.status == 200, await resp.text()
        async for raw in resp.content:
            if not raw.strip():
                continue
            chunk = json.loads(raw)
            if "error" in chunk:
                raise RuntimeError(chunk["error"])
            if chunk.get("done"):
                result.final = chunk
                break
            result.text += chunk.get("response") or chunk.get("message", {}).get("content", "")
            now = time.perf_counter()
            if result.first_token is None:
                result.first_token = now
            result.last_token = now
            result.tokens += 1
    return result


def run(coro):
    return asyncio.run(coro)
