"""``python -m llmhost.engine.runner``: one process serving one model over a private unix socket.

Lifecycle (docs/runner-protocol.md): load the model and context, start the engine thread, and only
then bind the socket (mode 0600) and print ``ready {health}`` to stdout, so a successful
``GET /health`` means ready too. With ``--spare`` (see ``engine/spare.py``) it first waits for its
arguments on stdin (``engine/control.py``): the daemon keeps one such process ready for a model.
A load failure prints one line ``error: <message>`` to stderr and exits 1. SIGTERM/SIGINT end
in-flight sequences with an error line, close the server, free the model and remove the socket.
The runner also asks the kernel to send it SIGTERM when its parent dies, so a crashed daemon does
not leave runners behind; with ``--parent-pid`` a daemon that died before that asking ends it too.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aiohttp import web

from llmhost.api.option_table import FLASH_ATTENTION_MODES
from llmhost.api.options import KV_CACHE_TYPES
from llmhost.engine import control
from llmhost.engine.cpu import REPACK_MODES, repack_enabled
from llmhost.engine.embeddings import Embedder
from llmhost.engine.engine import Engine
from llmhost.engine.llamacpp import Context, LoadError, Model, init_backend
from llmhost.engine.prompt import PromptBuilder
from llmhost.engine.runner_http import RunnerServer, resident_bytes
from llmhost.engine.sandbox import RenderLimits
from llmhost.errors import TemplateError

if TYPE_CHECKING:
    from llmhost.engine.rpc import RpcDevice
    from llmhost.engine.vision import Projector

log = logging.getLogger("llmhost.runner")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m llmhost.engine.runner", description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="path of the GGUF file")
    p.add_argument("--mmproj", default=None, help="path of a multimodal projector GGUF: the model then takes images")
    p.add_argument("--socket", required=True, help="unix socket path to serve on")
    p.add_argument("--parent-pid", type=int, default=None,
                   help="the daemon's pid: the runner exits with it (already gone: at once)")
    p.add_argument("--ctx-size", type=int, default=4096, help="tokens of context per sequence (num_ctx)")
    p.add_argument("--parallel", type=int, default=4, help="sequences decoded together")
    p.add_argument("--batch", type=int, default=512, help="n_batch: tokens per llama_decode")
    p.add_argument(
        "--kv-cells",
        type=int,
        default=None,
        help="KV cache cells shared by all sequences (default: ctx-size × parallel; fewer lets the "
        "sequences together outgrow the cache, and then sequences are swapped to host memory)",
    )
    p.add_argument(
        "--no-context-shift",
        action="store_true",
        help="end a sequence that fills ctx-size with done_reason length instead of shifting its context",
    )
    p.add_argument("--threads", type=int, default=None, help="llama.cpp threads (default: available CPUs)")
    p.add_argument(
        "--decode-threads",
        type=int,
        default=None,
        help="threads for steps that decode one token (default: --threads)",
    )
    p.add_argument("--gpu-layers", type=int, default=0, help="layers offloaded to the GPU")
    p.add_argument("--main-gpu", type=int, default=0, help="llama.cpp's main_gpu (the main_gpu option)")
    p.add_argument("--rpc", default="", help="llama.cpp RPC workers (`llm worker`), host:port,...: their devices "
                   "replace local GPUs, and --gpu-layers layers go to them")
    p.add_argument("--rpc-layers", default="",
                   help="layers per worker device, in order (the daemon's split); default: as llama.cpp splits "
                   "by their free memory, every layer offloaded")
    p.add_argument("--no-mmap", action="store_true", help="read the weights into memory instead of mmap")
    p.add_argument("--kv-cache-type", choices=KV_CACHE_TYPES, default="f16",
                   help="KV cache element type; q8_0 and q4_0 turn flash attention on")
    p.add_argument("--flash-attn", choices=FLASH_ATTENTION_MODES, default="auto",
                   help="llama.cpp's flash attention: auto (llama.cpp decides), on or off")
    p.add_argument("--cpu-repack", choices=REPACK_MODES, default="auto",
                   help="llama.cpp's repacked CPU kernels (extra buffer types): auto (on unless the CPU has AMX)")
    p.add_argument("--kv-host-cache", type=int, default=0,
                   help="bytes of host memory for idle cached prompts moved out of the KV cache (0: none)")
    p.add_argument("--no-prefix-cache", action="store_true", help="never reuse KV prefixes between requests")
    p.add_argument("--verbose", action="store_true", help="log llama.cpp and engine details to stderr")
    limits = RenderLimits()
    p.add_argument("--template-timeout", type=float, default=limits.seconds,
                   help="seconds the chat template renders of one request may take")
    p.add_argument("--template-steps", type=int, default=limits.steps,
                   help="loop iterations and calls the chat template renders of one request may make")
    p.add_argument("--template-chars", type=int, default=limits.chars,
                   help="characters a template's output, and any value it builds, may hold beyond twice the"
                   " request's text")
    args = p.parse_args(argv)
    if args.kv_cells is None:
        args.kv_cells = args.ctx_size * args.parallel
    for name in ("ctx_size", "parallel", "batch", "kv_cells", "template_steps", "template_chars"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if not args.template_timeout > 0:
        p.error("--template-timeout must be greater than 0")
    _parse_rpc(p, args)
    return args


def _parse_rpc(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    from llmhost.engine.rpc import parse_servers

    try:
        args.rpc = parse_servers(args.rpc)
        args.rpc_layers = tuple(int(n) for n in args.rpc_layers.split(",") if n.strip())
    except ValueError as e:
        p.error(f"--rpc/--rpc-layers: {e}")
    if any(n < 0 for n in args.rpc_layers) or (args.rpc_layers and not args.rpc):
        p.error("--rpc-layers needs --rpc and counts of 0 or more")


def _render_limits(args: argparse.Namespace) -> RenderLimits:
    return RenderLimits(seconds=args.template_timeout, steps=args.template_steps, chars=args.template_chars)


@dataclass
class Runtime:
    """What a loaded runner holds; ``close`` frees it in reverse order."""

    model: Model
    ctx: Context
    engine: Engine
    builder: PromptBuilder
    embedder: Embedder
    args: argparse.Namespace
    load_seconds: dict[str, float]  # how long each loading phase took (for the ready line)
    projector: Projector | None = None
    rpc: list[dict[str, Any]] | None = None  # the RPC worker devices and the layers each holds


    def info(self) -> dict[str, Any]:
        return {
            "model": self.model.path,
            "n_ctx": self.args.ctx_size,
            "n_ctx_train": self.model.n_ctx_train,
            "parallel": self.args.parallel,
            "kv_cells": self.engine.kv.n_cells,
            "kv_cache_type": self.ctx.kv_cache_type,
            "flash_attention": self.ctx.flash_attention,
            "cpu_repack": self.model.cpu_repack,
            "vision": self.projector is not None,
            **({"rpc": self.rpc} if self.rpc else {}),
            "engine": self.engine.snapshot(),
        }

    def close(self) -> None:
        self.engine.stop()
        self.embedder.close()
        if self.projector is not None:
            self.projector.close()
        self.ctx.close()
        self.model.close()


def load(args: argparse.Namespace) -> Runtime:
    """Model + context + engine; raises LoadError with a user-facing message.

    No warm-up decode: the weights are resident once loaded (llama.cpp populates the mapping) and
    the KV cache once the context exists (it is zero-filled), so a one-token decode added ~8 ms
    and ~2 MiB of compute buffer, and made the first prompt no faster. What it left uncounted, the
    compute buffer of a full batch (15–35 MiB for the test models), /health reports once used.
    """
    threads = args.threads or len(os.sched_getaffinity(0))
    decode_threads = args.decode_threads or threads
    clock = _Stopwatch()
    workers, layers = _attach_workers(args)
    if workers:
        clock.lap("rpc")
    model = Model(args.model, n_gpu_layers=args.gpu_layers, main_gpu=args.main_gpu, use_mmap=not args.no_mmap,
                  cpu_repack=repack_enabled(args.cpu_repack), devices=[d.handle for d in workers],
                  tensor_split=layers)
    clock.lap("model")
    projector = _load_projector(args.mmproj, model, threads) if args.mmproj else None
    if projector is not None:
        clock.lap("projector")
    compiling = _compile_template_meanwhile(model, args.ctx_size)
    failure = None
    try:
        ctx = Context(
            model,
            n_ctx=args.kv_cells,
            # One id more than the slots, for the engine's own decodes (Engine.probe_seq), where the
            # batch allows it (llama.cpp wants n_batch ≥ n_seq_max).
            n_seq_max=args.parallel + (args.batch > args.parallel),
            n_batch=args.batch,
            n_threads=threads,
            n_threads_decode=decode_threads,
            kv_unified=True,
            kv_cache_type=args.kv_cache_type,
            flash_attention=args.flash_attn,
        )
    except LoadError as e:
        failure = e
    compiling.join()  # it reads the model, so it must be done before the model can be closed
    if failure is not None:
        if projector is not None:
            projector.close()
        model.close()
        raise failure
    clock.lap("context")
    engine = Engine(
        model,
        ctx,
        n_slots=args.parallel,
        slot_capacity=args.ctx_size,
        reuse_prefixes=not args.no_prefix_cache,
        context_shift=not args.no_context_shift,
        images=_image_encoder(projector),
        host_cache_bytes=max(0, args.kv_host_cache),
    )
    embedder = Embedder(model, ctx_size=args.ctx_size, n_threads=threads)
    # A sequence can never hold more than the whole pool, so prompts are fitted to the smaller.
    builder = PromptBuilder(model, engine.kv.slot_capacity, _render_limits(args), projector=projector)
    clock.lap("engine")
    counts: list[float | None] = list(layers) if layers else [None] * len(workers)  # None: llama.cpp's own split
    rpc = [{"server": d.server, "device": d.index, "layers": None if n is None else int(n), "free": d.free,
            "total": d.total} for d, n in zip(workers, counts)]
    return Runtime(model, ctx, engine, builder, embedder, args, clock.laps, projector, rpc)


def _attach_workers(args: argparse.Namespace) -> tuple[list[RpcDevice], list[float] | None]:
    """The RPC workers' devices and the layers each gets (None: llama.cpp's split by free memory,
    every layer offloaded); LoadError naming a worker that is not there."""
    if not args.rpc:
        return [], None
    from llmhost.engine.rpc import RpcError, attach

    try:
        devices = attach(args.rpc)
    except RpcError as e:
        raise LoadError(str(e)) from None
    if not args.rpc_layers:
        args.gpu_layers = 999
        return devices, None
    if len(args.rpc_layers) != len(devices):
        raise LoadError(f"--rpc-layers gives {len(args.rpc_layers)} counts for {len(devices)} worker devices")
    args.gpu_layers = sum(args.rpc_layers)
    return devices, [float(n) for n in args.rpc_layers]


def _load_projector(path: str, model: Model, threads: int) -> Projector:
    """The projector for ``model`` (imported here: only a runner given one loads libmtmd);
    LoadError (the model freed) when it cannot be loaded."""
    from llmhost.engine.vision import Projector

    try:
        return Projector(path, model, n_threads=threads)
    except LoadError:
        model.close()
        raise


def _image_encoder(projector: Projector | None):
    if projector is None:
        return None
    from llmhost.engine.vision import ImageEncoder

    return ImageEncoder(projector)


class _Stopwatch:
    def __init__(self) -> None:
        self.laps: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps[name] = round(now - self._last, 4)
        self._last = now


def _compile_template_meanwhile(model: Model, ctx_size: int) -> threading.Thread:
    """Compile the model's chat template (~4 ms of Jinja) and list its special tokens (a pass over
    the vocabulary for the token memo, 15–90 ms) while llama.cpp creates the context.

    Creating the context runs in C with the GIL released, so this costs the first chat request
    nothing; both are cached for every later request.
    """

    def compile_template() -> None:
        try:
            PromptBuilder(model, ctx_size).template()
        except TemplateError:
            pass  # a broken template is reported to the request that uses it
        model.special_tokens()

    thread = threading.Thread(target=compile_template, name="llmhost-template", daemon=True)
    thread.start()
    return thread


async def serve(runtime: Runtime, socket_path: str) -> None:
    """Serve until SIGTERM/SIGINT."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # An engine that dies (it should not) takes the runner down, so the daemon reloads the model
    # instead of queueing requests nobody will serve.
    runtime.engine.on_exit = lambda: _call_soon(loop, stop.set)
    runtime.engine.start()
    app = RunnerServer(runtime.engine, runtime.builder, runtime.embedder, runtime.info).app()
    web_runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
    await web_runner.setup()
    try:
        await _bind(web_runner, socket_path)
        memory = resident_bytes()
        control.announce("ready", {"status": "ok", **runtime.info(), "memory_bytes": memory,
                                   "load_seconds": runtime.load_seconds})
        log.info("serving %s on %s (%d MiB resident)", runtime.model.path, socket_path, memory >> 20)
        await stop.wait()
    finally:
        # Stopping the engine first ends every stream with an error line, so handlers return
        # promptly and the server's shutdown does not wait on them.
        await loop.run_in_executor(None, runtime.engine.stop)
        await web_runner.cleanup()
        _unlink(socket_path)


async def _bind(web_runner: web.AppRunner, path: str) -> None:
    _unlink(path)  # a stale socket from a killed runner
    old = os.umask(0o177)  # the socket is created 0600: no window where others could connect
    try:
        await web.UnixSite(web_runner, path).start()
    finally:
        os.umask(old)
    os.chmod(path, 0o600)


def _call_soon(loop: asyncio.AbstractEventLoop, callback) -> None:
    try:
        loop.call_soon_threadsafe(callback)
    except RuntimeError:  # the loop is already closed: nothing left to wake
        pass


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _wait_as_spare() -> list[str] | None:
    """Everything is imported; initialise llama.cpp, announce, and wait for the arguments."""
    control.set_process_name("llmhost-spare")
    init_backend()
    control.announce("spare", control.identity())
    return control.wait_for_load()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv == ["--spare"]:  # from engine/spare.py, which has set its parent-death signal
        try:
            argv = _wait_as_spare()
        except ValueError as e:  # a malformed load line (a daemon bug)
            print(f"error: {e}", file=sys.stderr, flush=True)
            return 1
        if argv is None:  # the daemon closed our stdin: it no longer needs a spare
            return 0
    args = parse_args(argv)
    control.die_with_parent(signal.SIGTERM, args.parent_pid)  # now SIGTERM: there is a model to free
    control.set_process_name("llmhost-runner")
    level = logging.DEBUG if args.verbose else logging.WARNING
    logging.basicConfig(level=level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not args.verbose:
        # Keep stderr to our own lines (a failed load must print exactly one "error:" line);
        # llama.cpp's first error still reaches the user through LoadError's message.
        logging.getLogger("llmhost.llama").setLevel(logging.CRITICAL)
    try:
        runtime = load(args)
    except LoadError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 1
    try:
        asyncio.run(serve(runtime, args.socket))
    except OSError as e:  # the socket could not be bound
        print(f"error: cannot serve on {args.socket}: {e}", file=sys.stderr, flush=True)
        return 1
    finally:
        runtime.close()
    if runtime.engine.crashed:
        print("error: the engine stopped unexpectedly (see the log above)", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
