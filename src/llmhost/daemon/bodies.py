"""Request bodies read in the event loop, bounded in size and in idle time.

A body is read chunk by chunk on the loop with a deadline on every read, so a client that stops
sending holds one coroutine (never a thread) and is cut off after ``idle_timeout``. A blob upload is
written through the store's ``BlobWriter`` on an executor of its own, one bounded write at a time,
while the loop receives the next piece.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import TypeVar

from aiohttp import web

from llmhost.errors import BodyTimeout, BodyTooLarge
from llmhost.registry.store import BlobWriter
from llmhost.units import format_size

WRITE_SIZE = 1 << 20  # received bytes are handed to the writer in pieces of about this size

T = TypeVar("T")


@dataclass(frozen=True)
class BodyLimits:
    """How large a body may be, how long it may pause, and the setting that raises the size limit."""

    max_size: int
    idle_timeout: float
    size_setting: str

    def check_declared(self, request: web.Request) -> None:
        """Refuse at once a body whose Content-Length is over the limit."""
        if request.content_length is not None and request.content_length > self.max_size:
            raise self.too_large()

    def too_large(self) -> BodyTooLarge:
        return BodyTooLarge(f"request body too large: the limit is {format_size(self.max_size)} "
                            f"({self.max_size} bytes, {self.size_setting})")

    def timed_out(self) -> BodyTimeout:
        return BodyTimeout(f"request body stalled: nothing received for {self.idle_timeout:g}s "
                           "(LLMHOST_BODY_IDLE_TIMEOUT)")


async def body_chunks(request: web.Request, limits: BodyLimits) -> AsyncIterator[bytes]:
    """The body's chunks as they arrive; BodyTimeout after a silence, BodyTooLarge past the limit."""
    limits.check_declared(request)
    received = 0
    while True:
        try:
            chunk = await asyncio.wait_for(request.content.readany(), limits.idle_timeout)
        except asyncio.TimeoutError:
            raise limits.timed_out() from None
        if not chunk:
            return
        received += len(chunk)
        if received > limits.max_size:
            raise limits.too_large()
        yield chunk


async def read_body(request: web.Request, limits: BodyLimits) -> bytes:
    """A whole (small) body, under the same bounds as an upload."""
    return b"".join([chunk async for chunk in body_chunks(request, limits)])


async def receive_blob(request: web.Request, writer: BlobWriter, executor: Executor,
                       limits: BodyLimits) -> tuple[str, int]:
    """Write the body through ``writer`` on ``executor`` and commit it; returns (digest, size).

    Whatever happens (a stall, an oversize body, a bad digest, a full disk, the client gone), the
    writer is aborted, so no temp file stays behind.
    """
    loop = asyncio.get_running_loop()

    def run(fn: Callable[..., T], *args: object) -> asyncio.Future[T]:
        return loop.run_in_executor(executor, fn, *args)

    try:
        await _pump(body_chunks(request, limits), lambda piece: run(writer.write, piece))
        return await run(writer.commit)
    finally:
        # Submitted at once, so it runs even if this task is cancelled again while it waits.
        await asyncio.shield(run(writer.abort))


async def _pump(chunks: AsyncIterator[bytes], write: Callable[[bytearray], Awaitable[None]]) -> None:
    """Hand ``chunks`` to ``write`` in pieces of about WRITE_SIZE, receiving while the last is written."""
    pending: asyncio.Future[None] | None = None
    piece = bytearray()
    try:
        async for chunk in chunks:
            piece += chunk
            if len(piece) >= WRITE_SIZE:
                if pending is not None:
                    await pending
                pending, piece = asyncio.ensure_future(write(piece)), bytearray()
        if pending is not None:
            await pending
        if piece:
            await write(piece)
    finally:
        if pending is not None and not pending.done():
            pending.cancel()  # not started: never runs; running: the writer's lock orders the abort after it
