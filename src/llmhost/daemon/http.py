"""HTTP plumbing shared by the routes: JSON bodies in, JSON or NDJSON out, errors as Ollama shapes them."""

from __future__ import annotations

import json
import logging
import time
from datetime import datetime, timezone
from typing import Any, AsyncIterator

from aiohttp import web

from llmhost.errors import BadRequest, LlmhostError

log = logging.getLogger(__name__)


async def read_json(request: web.Request) -> dict:
    """The request body as a JSON object; 400 with a clear message otherwise."""
    raw = await request.read()
    if not raw.strip():
        raise BadRequest("missing request body")
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BadRequest(f"invalid JSON in request body: {e}") from None
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    return body


def error_response(error: LlmhostError) -> web.Response:
    return web.json_response({"error": error.message}, status=error.status)


def now_rfc3339() -> str:
    return format_time(time.time())


def format_time(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, timezone.utc).astimezone().isoformat()


async def stream_ndjson(request: web.Request, events: AsyncIterator[dict], stream: bool,
                        merge=None) -> web.StreamResponse:
    """Send ``events`` as NDJSON, or (``stream`` false) as one JSON object built by ``merge``.

    An error before the first line becomes a normal error response with its status; an error after
    streaming began becomes a final ``{"error": ...}`` line (status stays 200), as Ollama does.
    """
    iterator = events.__aiter__()
    try:
        first = await iterator.__anext__()
    except StopAsyncIteration:
        first = None
    if not stream:
        collected = [] if first is None else [first]
        async for event in iterator:
            collected.append(event)
        final = merge(collected) if merge else (collected[-1] if collected else {})
        return web.json_response(final)
    response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
    await response.prepare(request)
    try:
        if first is not None:
            await response.write(_line(first))
        async for event in iterator:
            await response.write(_line(event))
    except LlmhostError as e:
        await response.write(_line({"error": e.message}))
    except (ConnectionResetError, ConnectionError):
        raise
    except Exception as e:  # a bug must still end the stream with a readable line
        log.exception("stream failed")
        await response.write(_line({"error": f"internal error: {e}"}))
    await response.write_eof()
    return response


def _line(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False).encode() + b"\n"
