"""llama.cpp's ``llama-server``, built once from the llama.cpp that the installed llama-cpp-python
vendors (so both sides run the same kernels), and started like a daemon for ``scripts/bench peers``."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.metadata
import os
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from benchmarks.harness import free_port

CACHE = Path(os.environ.get("BENCH_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
             / "llmhost-bench")
JOBS = os.environ.get("BENCH_BUILD_JOBS", "2")
# The wheel is built with llama.cpp's defaults (GGML_NATIVE on, OpenMP on: its libggml-cpu links
# libgomp and reports AVX512, OPENMP); static here only so the binary stands alone in the cache.
CMAKE_FLAGS = (
    "-DCMAKE_BUILD_TYPE=Release", "-DGGML_NATIVE=ON", "-DLLAMA_BUILD_SERVER=ON", "-DLLAMA_CURL=OFF",
    "-DLLAMA_OPENSSL=OFF", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_USE_PREBUILT_UI=OFF", "-DBUILD_SHARED_LIBS=OFF",
)


class BuildError(RuntimeError):
    """A step of the llama-server build failed; the message names the step and ends with its log."""


def version() -> str:
    return importlib.metadata.version("llama-cpp-python")


def extra_cmake_flags() -> list[str]:
    """``CMAKE_ARGS``, as ``scripts/setup`` passes it to llama-cpp-python's build (``-DGGML_CUDA=on``
    for a GPU), so that llama-server has the same backends as the runner."""
    return shlex.split(os.environ.get("CMAKE_ARGS", ""))


def _home() -> Path:
    """Where this build is cached: one directory per llama-cpp-python version and extra flags."""
    extra = extra_cmake_flags()
    suffix = "-" + hashlib.sha256(" ".join(extra).encode()).hexdigest()[:10] if extra else ""
    return CACHE / f"llama-server-{version()}{suffix}"


def binary() -> Path:
    """The cached llama-server for the installed llama-cpp-python, building it first if need be."""
    home = _home()
    target = home / "llama-server"
    if target.exists():
        return target
    home.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="build-", dir=home))
    started = time.perf_counter()
    log = work / "build.log"
    print(f"building llama-server {version()} in {work} (once; ~6 min on 2 cores)", file=sys.stderr, flush=True)
    source = _vendored_source(work, log)
    flags = [*CMAKE_FLAGS, *extra_cmake_flags()]
    _step("cmake configure", ["cmake", "-S", str(source), "-B", str(work / "build"), *_generator(), *flags], log)
    _step("cmake build", ["cmake", "--build", str(work / "build"), "--target", "llama-server", "-j", JOBS], log)
    built = work / "build" / "bin" / "llama-server"
    shutil.copy2(built, target.with_suffix(".partial"))
    target.with_suffix(".partial").rename(target)
    (home / "build-info.txt").write_text(f"llama-cpp-python {version()}\nbuilt in {time.perf_counter() - started:.0f} s\n"
                                        + " ".join(flags) + "\n")
    shutil.rmtree(work, ignore_errors=True)
    print(f"built {target} in {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
    return target


def _vendored_source(work: Path, log: Path) -> Path:
    """Download llama-cpp-python's sdist (pip's cache answers later runs) and extract vendor/llama.cpp."""
    _step("pip download of the sdist", [sys.executable, "-m", "pip", "download", f"llama-cpp-python=={version()}",
                                        "--no-binary", ":all:", "--no-deps", "-d", str(work)], log)
    sdist = next(work.glob("llama_cpp_python-*.tar.gz"))
    prefix = f"{sdist.name.removesuffix('.tar.gz')}/vendor/llama.cpp/"
    with tarfile.open(sdist) as tar:
        members = [m for m in tar.getmembers() if m.name.startswith(prefix)]
        if not members:
            raise BuildError(f"{sdist.name} has no vendor/llama.cpp")
        kwargs = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
        tar.extractall(work / "src", members=members, **kwargs)
    sdist.unlink()
    return work / "src" / prefix


def _generator() -> list[str]:
    return ["-G", "Ninja"] if shutil.which("ninja") else []


def _step(name: str, argv: list[str], log: Path) -> None:
    argv = ["nice", "-n", "19", *argv] if shutil.which("nice") else argv  # the machine may be shared
    with open(log, "ab") as out:
        out.write(f"\n$ {' '.join(argv)}\n".encode())
        out.flush()
        done = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-40:])
        raise BuildError(f"llama-server build: {name} failed (exit {done.returncode}); full log {log}:\n{tail}")


@dataclass
class Server:
    url: str
    proc: subprocess.Popen
    log: Path


def matched_flags(ctx_per_slot: int) -> list[str]:
    """Flags that make llama-server's engine settings llmhost's, where this build has them:
    one KV pool shared by all slots, each slot capped at ``ctx_per_slot`` (llmhost's runner sets
    kv_unified and caps a sequence at num_ctx), a full-size SWA cache (llama_context_default_params'
    swa_full, which llmhost keeps; llama-server's default is a window-sized one), no repacked
    weights where llmhost turns them off (AMX CPUs), and llmhost's default repetition penalty
    (Ollama's ``repeat_penalty`` 1.1 over the last 64 tokens; llama-server's default is none), so
    that greedy replies, and with them the later prompts of a conversation, are the same work."""
    from llmhost.api.options import DEFAULTS
    from llmhost.engine.cpu import repack_enabled

    wanted = [["--kv-unified"], ["--kv-unified-per-slot", str(ctx_per_slot)], ["--swa-full"], ["--no-webui"],
              ["--repeat-penalty", str(DEFAULTS["repeat_penalty"])], ["--repeat-last-n", str(DEFAULTS["repeat_last_n"])]]
    if not repack_enabled("auto"):
        wanted.append(["--no-repack"])
    return [part for flag in wanted if flag[0] in _help() for part in flag]


@functools.lru_cache(maxsize=1)
def _help() -> str:
    done = subprocess.run([str(binary()), "--help"], capture_output=True, text=True, timeout=60)
    return done.stdout + done.stderr


@contextlib.contextmanager
def serve(model: Path, *, threads: int, parallel: int, ctx_per_slot: int, batch: int, embeddings: bool = False,
          gpu_layers: int | None = None):
    """``llama-server`` on a free port: ``parallel`` slots sharing one KV pool of parallel ×
    ``ctx_per_slot`` cells (``-c`` is the total across slots), ``batch`` tokens per decode, as
    llmhost's runner has them; ``gpu_layers`` layers offloaded (``-ngl``; None: llama-server's default)."""
    port = free_port()
    argv = [str(binary()), "-m", str(model), "-t", str(threads), "-tb", str(threads), "-np", str(parallel),
            "-c", str(ctx_per_slot * parallel), "-b", str(batch), "-ub", str(min(batch, 512)), "--host", "127.0.0.1",
            "--port", str(port), *matched_flags(ctx_per_slot)]
    if embeddings:
        argv += ["--embeddings", "--pooling", "mean"]  # llmhost's Embedder pools decoder models by mean
    if gpu_layers is not None:  # else llama-server's default, auto, as llmhost's num_gpu -1
        argv += ["-ngl", str(gpu_layers)]
    log = Path(tempfile.mkstemp(prefix="llama-server-", suffix=".log")[1])
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, proc, log)
        yield Server(url, proc, log)
    except BaseException:
        print(f"llama-server's log is kept in {log}", file=sys.stderr)
        raise
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    log.unlink(missing_ok=True)


def wait_ready(url: str, proc: subprocess.Popen, log: Path, name: str = "llama-server") -> None:
    """``/health`` answers 503 while the model loads and 200 once it can take requests."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-20:])
            raise RuntimeError(f"{name} exited with {proc.returncode}:\n{tail}")
        with contextlib.suppress(OSError):
            if urllib.request.urlopen(url + "/health", timeout=1).status == 200:
                return
        time.sleep(0.1)
    raise RuntimeError(f"{name} did not become ready in 120 s")


if __name__ == "__main__":
    print(binary())
