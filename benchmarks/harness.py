"""A daemon in a temporary store, a model created in it, and a timed streaming client."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
MODELS = Path(os.environ.get("LLMHOST_TEST_MODELS", ROOT / ".test-models"))
SMOLLM2 = MODELS / "SmolLM2-135M-Instruct.Q4_1.gguf"
GEMMA3 = MODELS / "gemma-3-270m-q4_k_m.gguf"
THREADS = int(os.environ.get("BENCH_THREADS", "2"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Daemon:
    url: str
    env: dict
    proc: subprocess.Popen
    workdir: Path


@contextlib.contextmanager
def daemon(**env_overrides: str):
    """Start ``python -m llmhost.daemon`` on a free port with its own store; stop it afterwards."""
    workdir = Path(tempfile.mkdtemp(prefix="llmhost-bench-"))
    port = free_port()
    env = dict(os.environ)
    env.update({
        "LLMHOST_HOST": f"127.0.0.1:{port}",
        "LLMHOST_MODELS": str(workdir / "models"),
        "LLMHOST_SOCKET": str(workdir / "llmhost.sock"),
        "LLMHOST_NUM_THREADS": str(THREADS),
        "LLMHOST_KEEP_ALIVE": "30m",
        "LLMHOST_SPARE_RUNNER": "1",  # a runner process kept ready for the next load (P4)
    })
    env.update(env_overrides)
    log = open(workdir / "daemon.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "llmhost.daemon"], env=env, stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_up(url, proc)
        yield Daemon(url, env, proc, workdir)
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
    # Each run copies the model into its store (~100–350 MB); a failed run keeps it, with its log.
    shutil.rmtree(workdir, ignore_errors=True)


def _wait_up(url: str, proc: subprocess.Popen) -> None:
    import urllib.request

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"daemon exited with {proc.returncode}")
        with contextlib.suppress(OSError):
            urllib.request.urlopen(url + "/", timeout=1).read()
            return
        time.sleep(0.1)
    raise RuntimeError("daemon did not start")


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
