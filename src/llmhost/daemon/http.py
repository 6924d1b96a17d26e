"""HTTP plumbing shared by the routes: JSON bodies in, JSON or NDJSON out (errors in-band, as Ollama sends them)."""

from __future__ import annotations

import json
import math
import time
from collections.abc import AsyncIterator, Callable
from datetime import datetime, timezone
from typing import Any

from aiohttp import web

from llmhost.api.types import JsonObject
from llmhost.daemon.bodies import BodyLimits, read_body
from llmhost.daemon.dialects import Dialect, in_band_error
from llmhost.daemon.state import state_of
from llmhost.errors import BadRequest

MAX_JSON_BODY = 64 * 1024**2  # the app's client_max_size: requests are JSON, blobs stream separately
MAX_JSON_DEPTH = 100  # arrays and objects inside each other; real schemas and tool calls stay far below


def json_limits(request: web.Request) -> BodyLimits:
    """A JSON body's bounds: its size, and the idle timeout every body has (a stalled client is cut)."""
    idle = state_of(request).settings.body_idle_timeout
    return BodyLimits(MAX_JSON_BODY, idle, "the limit for JSON request bodies")


async def read_json(request: web.Request) -> JsonObject:
    """The request body as a JSON object; 400 with a clear message otherwise.

    Strict JSON, as Go's decoder (and so Ollama) reads it: NaN, Infinity and numbers beyond a double
    are refused, and so is nesting deeper than ``MAX_JSON_DEPTH``.
    """
    raw = await read_body(request, json_limits(request))
    if not raw.strip():
        raise BadRequest("missing request body")
    try:
        body = json.loads(raw, parse_constant=_not_a_number, parse_float=_finite_float)
    except RecursionError:
        raise _too_deep() from None
    except (json.JSONDecodeError, UnicodeDecodeError, _NotJson) as e:
        raise BadRequest(f"invalid JSON in request body: {e}") from None
    except ValueError:  # Python's own limit on the digits of an integer
        raise BadRequest("invalid JSON in request body: a number has too many digits") from None
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    if _deeper_than(body, MAX_JSON_DEPTH):
        raise _too_deep()
    return body


class _NotJson(ValueError):
    """Python's decoder accepts it; JSON (and Go) do not."""


def _not_a_number(name: str) -> float:
    raise _NotJson(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise _NotJson(f"number {text[:40]} is out of range")
    return value


def _too_deep() -> BadRequest:
    return BadRequest(f"invalid JSON in request body: nested more than {MAX_JSON_DEPTH} levels deep")


def _deeper_than(value: JsonObject | list[Any], limit: int) -> bool:
    """Whether arrays and objects nest more than ``limit`` levels (without recursing ourselves)."""
    level, containers = 1, [value]
    while containers:
        if level > limit:
            return True
        containers = [child for c in containers for child in (c.values() if isinstance(c, dict) else c)
                      if isinstance(child, (dict, list))]
        level += 1
    return False


def now_rfc3339() -> str:
    return format_time(time.time())


def format_time(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, timezone.utc).astimezone().isoformat()


async def stream_ndjson(request: web.Request, events: AsyncIterator[JsonObject], stream: bool,
                        merge: Callable[[list[JsonObject]], JsonObject] | None = None) -> web.StreamResponse:
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
    except ConnectionError:
        raise
    except Exception as e:  # a bug too must end the stream with a readable line
        await response.write(_line(in_band_error(e, Dialect.OLLAMA)))
    await response.write_eof()
    return response


def _line(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False).encode() + b"\n"
