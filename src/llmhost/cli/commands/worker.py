"""``llm worker``: lend this machine's memory and compute to llmhost daemons elsewhere, through
llama.cpp's RPC server (``engine/rpc.py``); daemons use it with ``LLMHOST_RPC_SERVERS=host:port``."""

from __future__ import annotations

import typer

HELP = ("Lend this machine's memory and compute (its GPUs, else its CPU) to llmhost daemons that split "
        "models across machines (llama.cpp's RPC server; unauthenticated: trusted networks only).")

WARNING = """\
WARNING: llama.cpp's RPC protocol has no authentication and no encryption. Anyone who can connect
to {endpoint} can use this machine's memory and compute, read the model data it holds and
crash it. Listen on a trusted private network only, never on an address the internet can reach.
See docs/scale-out.md."""


def command(
    host: str = typer.Option("127.0.0.1", "--host",
                             help="address to listen on; the default, 127.0.0.1, only serves this machine"),
    port: int = typer.Option(50052, "--port", min=1, max=65535, help="TCP port to listen on"),
    mem: int | None = typer.Option(None, "--mem", min=1,
                                   help="MiB of memory to lend (default: what is available); daemons place "
                                   "layers by it"),
    threads: int | None = typer.Option(None, "--threads", min=1,
                                       help="CPU threads for computing (default: LLMHOST_NUM_THREADS, else the "
                                       "physical cores)"),
) -> None:
    import signal

    from llmhost.engine.rpc import RpcError, require_rpc, serve, split_endpoint
    from llmhost.errors import LlmhostError

    try:
        split_endpoint(f"{host}:{port}")
    except ValueError as e:
        raise LlmhostError(f"--host: {e}") from None
    try:
        require_rpc()
    except RpcError as e:
        raise LlmhostError(str(e)) from None
    typer.echo(WARNING.format(endpoint=f"{host}:{port}"), err=True)
    # The server never returns to Python, so Python's handler would never run: Ctrl+C ends the process.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    try:
        serve(host, port, threads=threads or _default_threads(), mem_bytes=mem * 1024**2 if mem else None)
    except RpcError as e:
        raise LlmhostError(str(e)) from None


def _default_threads() -> int:
    from llmhost.config import Settings

    return Settings.from_env().num_threads
