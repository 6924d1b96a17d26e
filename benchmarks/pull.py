"""P5 pull throughput: a ≥500 MB blob from a loopback registry through the daemon ÷ ``curl -o`` of it.

The registry is a separate process serving files with sendfile (manifest + blob, Range supported), so
both clients face the same server. The daemon's pull verifies sha256 as always; curl only writes.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

from benchmarks.harness import ROOT, daemon, free_port

SIZE = int(os.environ.get("BENCH_PULL_BYTES", str(512 << 20)))
MANIFEST_V2 = "application/vnd.docker.distribution.manifest.v2+json"


def p5(repeats: int = 3) -> dict:
    """Median MB/s of ``/api/pull`` (ranged parts, sha256 on) and of ``curl -o``, and their ratio."""
    workdir = Path(tempfile.mkdtemp(prefix="llmhost-p5-"))
    try:
        digest = _write_registry(workdir / "registry", SIZE)
        port = free_port()
        server = subprocess.Popen([sys.executable, "-m", "benchmarks.pull", "serve", str(workdir / "registry"),
                                   str(port)], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            base = f"http://127.0.0.1:{port}"
            _wait_for(base + "/v2/")
            blob_url = f"{base}/v2/library/big/blobs/{digest}"
            curl_s = [_curl(blob_url, workdir / "curl.bin") for _ in range(repeats + 1)][1:]  # first warms the cache
            with daemon() as d:
                pull_s = []
                for _ in range(repeats + 1):  # the first warms the daemon up, as curl's first does the cache
                    pull_s.append(asyncio.run(_pull(d.url, f"{base}/library/big:latest")))
                    shutil.rmtree(d.workdir / "models")  # not /api/delete: the blob is no GGUF
                pull_s = pull_s[1:]
            shutil.rmtree(d.workdir, ignore_errors=True)
        finally:
            server.terminate()
            server.wait(10)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    mb = SIZE / 1e6
    pull_rate, curl_rate = mb / statistics.median(pull_s), mb / statistics.median(curl_s)
    return {"bytes": SIZE, "pull_mb_s": pull_rate, "curl_mb_s": curl_rate, "ratio": pull_rate / curl_rate}


def _write_registry(root: Path, size: int) -> str:
    """A random blob, a config and a manifest laid out as files the server maps to the API."""
    (root / "blobs").mkdir(parents=True)
    hasher, tmp = hashlib.sha256(), root / "blobs" / "tmp"
    with open(tmp, "wb") as f:
        for offset in range(0, size, 4 << 20):
            chunk = os.urandom(min(4 << 20, size - offset))
            hasher.update(chunk)
            f.write(chunk)
    digest = "sha256:" + hasher.hexdigest()
    tmp.rename(root / "blobs" / digest)
    config = json.dumps({"model_format": "gguf"}).encode()
    config_digest = "sha256:" + hashlib.sha256(config).hexdigest()
    (root / "blobs" / config_digest).write_bytes(config)
    manifest = {"schemaVersion": 2, "mediaType": MANIFEST_V2,
                "config": {"mediaType": "application/vnd.docker.container.image.v1+json",
                           "digest": config_digest, "size": len(config)},
                "layers": [{"mediaType": "application/vnd.ollama.image.model", "digest": digest, "size": size}]}
    (root / "manifest").write_text(json.dumps(manifest))
    return digest


def _curl(url: str, out: Path) -> float:
    started = time.perf_counter()
    subprocess.run(["curl", "-s", "-f", "-o", str(out), url], check=True)
    elapsed = time.perf_counter() - started
    out.unlink()
    return elapsed


async def _pull(daemon_url: str, model: str) -> float:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as s:
        started = time.perf_counter()
        async with s.post(f"{daemon_url}/api/pull", json={"model": model, "insecure": True}) as r:
            last = {}
            async for line in r.content:
                if line.strip():
                    last = json.loads(line)
        elapsed = time.perf_counter() - started
        if last.get("status") != "success":
            raise RuntimeError(f"pull failed: {last}")
    return elapsed


def _wait_for(url: str) -> None:
    import urllib.request

    for _ in range(100):
        try:
            urllib.request.urlopen(url, timeout=1).read()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("benchmark registry did not start")


def _serve(root: Path, port: int) -> None:
    """The loopback registry: the manifest for any name, blobs by digest (sendfile, Range)."""
    from aiohttp import web

    async def base(request: web.Request) -> web.Response:
        return web.json_response({})

    async def manifest(request: web.Request) -> web.Response:
        return web.Response(body=(root / "manifest").read_bytes(), content_type=MANIFEST_V2)

    async def blob(request: web.Request) -> web.StreamResponse:
        path = root / "blobs" / request.match_info["digest"]
        if request.match_info["digest"].startswith(".") or not path.is_file():
            raise web.HTTPNotFound()
        return web.FileResponse(path, headers={"Content-Type": "application/octet-stream"})

    app = web.Application()
    app.router.add_get("/v2/", base)
    app.router.add_get("/v2/{ns}/{model}/manifests/{tag}", manifest)
    app.router.add_get("/v2/{ns}/{model}/blobs/{digest}", blob)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


if __name__ == "__main__" and sys.argv[1:2] == ["serve"]:
    _serve(Path(sys.argv[2]), int(sys.argv[3]))
