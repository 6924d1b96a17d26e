"""How a completion's outputs travel from the engine thread to the daemon's connection.

The engine thread calls a sequence's sink (an ``OutputStream``) once per output. The first outputs go
through the event loop: a ``Mailbox`` wakes it once per batch of outputs, and the request's handler
writes them as NDJSON lines in HTTP chunks. Once the response has started and everything posted has
been written, the handler hands the stream a duplicate of the connection's socket (``go_direct``),
and from then on the engine thread writes each output's chunk itself: no loop wake-up, no thread
switch, one ``send`` a token (issue 16: the runner's loop cost ~0.1 ms of CPU a token, taken from
llama.cpp's threads on a small machine).

The engine thread never blocks on the socket (it is non-blocking, as asyncio keeps it): a write
that does not go through whole, the final line, or a failed connection ends the direct writing,
and the loop is told by a ``Handback``, with the part of the chunk still to write. The handler's end
(its client gone, its task cancelled) closes the duplicate first, under the same lock the engine
thread writes under, so nothing is written after it.
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import socket
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from json.encoder import encode_basestring
from typing import Any

from llmhost.engine.sequence import Failed, Finished, Output, TextChunk, ThinkingChunk, TokenLogprobs, ToolCallsChunk


@dataclass(frozen=True)
class Handback:
    """The engine thread stopped writing a stream itself: ``rest`` is the part of an HTTP chunk it
    could not write (the loop writes it as it is), ``done`` that the final line has gone out (whole
    or in ``rest``), ``broken`` that the connection failed."""

    rest: bytes
    done: bool
    broken: bool


class Mailbox:
    """Carries outputs from the engine thread to the event loop with one wake-up per batch.

    Every output used to cost a ``call_soon_threadsafe`` (a self-pipe write and a loop wake-up);
    with many sequences streaming, one engine step produced one of each per sequence. Outputs now
    queue here and only the first one since the loop last drained wakes it.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self._loop = loop
        self._items: collections.deque[tuple[OutputStream, Output | Handback]] = collections.deque()
        self._wake_pending = False

    def post(self, stream: OutputStream, item: Output | Handback) -> None:
        """Engine thread: queue an output (or a hand-back) for ``stream``'s reader."""
        self._items.append((stream, item))
        if not self._wake_pending:
            self._wake_pending = True
            try:
                self._loop.call_soon_threadsafe(self._drain)
            except RuntimeError:  # the loop is closed: the requests are long gone
                pass

    def _drain(self) -> None:
        # Reset before draining: an output posted meanwhile either is drained now or wakes us again.
        self._wake_pending = False
        items = self._items
        while items:
            stream, item = items.popleft()
            stream.deliver(item)


class OutputStream:
    """A sequence's sink: the engine thread calls it; the handler awaits ``take`` and may let the
    engine thread write to the connection itself (``go_direct``).

    A list and one future rather than an ``asyncio.Queue``: streaming one sequence through the loop
    costs a wake-up per token, and on 2 CPUs every microsecond of it is taken from llama.cpp's threads.
    """

    def __init__(self, mailbox: Mailbox):
        self._mailbox = mailbox
        self._ready: list[Output] = []
        self._handback: Handback | None = None
        self._waiter: asyncio.Future | None = None
        self._lock = threading.Lock()  # the engine thread's writes against go_direct and stop_direct
        self._direct: socket.socket | None = None
        self._posted = 0  # items posted to the mailbox (engine thread, under the lock)
        self._taken = 0  # ... and taken by the handler (event loop)

    @property
    def direct(self) -> bool:
        """Whether the engine thread writes this stream's outputs itself now."""
        return self._direct is not None

    def __call__(self, output: Output) -> None:
        """Engine thread: an output of the sequence."""
        with self._lock:
            if self._direct is not None:
                self._write_direct(self._direct, output)
                return
            self._posted += 1
        self._mailbox.post(self, output)

    def _write_direct(self, sock: socket.socket, output: Output) -> None:
        payload, done = encode([output])
        frame = b"%x\r\n%b\r\n" % (len(payload), payload)  # one HTTP/1.1 chunk, as aiohttp frames them
        try:
            sent = sock.send(frame)
        except BlockingIOError:
            sent = 0
        except OSError:  # the daemon went away
            sent = -1
        if sent == len(frame) and not done:
            return
        self._direct = None
        sock.close()
        rest = frame[sent:] if 0 <= sent < len(frame) else b""
        self._posted += 1
        self._mailbox.post(self, Handback(rest, done=done, broken=sent < 0))

    def go_direct(self, transport: asyncio.Transport) -> None:
        """Event loop, after a write: let the engine thread write the next outputs to the connection
        itself, if everything posted so far has been taken and the transport holds nothing unsent."""
        raw = transport.get_extra_info("socket")
        if raw is None or transport.get_write_buffer_size():
            return
        with self._lock:
            if self._direct is None and self._posted == self._taken:
                # A duplicate: the loop may close its descriptor (and its number be reused) at any time.
                self._direct = socket.socket(raw.family, raw.type, fileno=os.dup(raw.fileno()))

    def stop_direct(self) -> None:
        """Event loop, when the handler ends: no more writes from the engine thread."""
        with self._lock:
            if self._direct is not None:
                self._direct.close()
                self._direct = None

    def deliver(self, item: Output | Handback) -> None:
        """Event loop: an output (or the hand-back) has arrived."""
        if isinstance(item, Handback):
            self._handback = item
        else:
            self._ready.append(item)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def take(self) -> tuple[Handback | None, list[Output]]:
        """The hand-back, if one came, and every output delivered so far; waits for either. A
        hand-back precedes the outputs taken with it (the engine thread posts nothing after it
        while it writes directly)."""
        while not self._ready and self._handback is None:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        handback, ready = self._handback, self._ready
        self._handback, self._ready = None, []
        self._taken += len(ready) + (handback is not None)
        return handback, ready


def encode(outputs: list[Output]) -> tuple[bytes, bool]:
    """NDJSON lines for ``outputs`` (nothing after the final one), and whether it was final."""
    lines = []
    for output in outputs:
        if isinstance(output, TextChunk):
            lines.append(_content_line(output.text))
        elif isinstance(output, ThinkingChunk):
            lines.append(line({"thinking": output.text}))
        elif isinstance(output, ToolCallsChunk):
            lines.append(line({"tool_calls": list(output.calls)}))
        elif isinstance(output, TokenLogprobs):
            lines.append(line({"logprobs": output.to_json()}))
        elif isinstance(output, Finished):
            lines.append(line(output.to_json()))
            return b"".join(lines), True
        elif isinstance(output, Failed):
            lines.append(line({"error": output.message}))
            return b"".join(lines), True
    return b"".join(lines), False


def line(obj: Mapping[str, Any]) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"


def _content_line(text: str) -> bytes:
    # The per-token line, without building and encoding a dict each time.
    return b'{"content":' + encode_basestring(text).encode() + b"}\n"
