"""Errors in the dialect of the route: one table of names, one renderer, one middleware.

    dialect     routes                          error body
    OLLAMA      /api/*, /, /health, /metrics…   {"error": message}
    OPENAI      /v1/* (but /v1/messages)        {"error": {"message", "type", "param", "code"}}
    ANTHROPIC   /v1/messages, /v1/messages/*    {"type": "error", "error": {"type", "message"}}
    DOCKER      /v2, /v2/*                      {"errors": [{"code", "message", "detail"}]}

The HTTP status is the error's own (``llmhost.errors``); what each protocol calls that status is
``NAMES``. A stream that has begun carries the same body in-band: an NDJSON line
(``http.stream_ndjson``), an SSE ``data:`` line (OpenAI) or an ``event: error`` (Anthropic).
Anything that is not an LlmhostError is a bug, told to the client as a 500 without file paths.
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass

from aiohttp import web
from aiohttp.typedefs import Handler

from llmhost.api.types import JsonObject
from llmhost.errors import LlmhostError

log = logging.getLogger(__name__)

ANTHROPIC_PATH = "/v1/messages"
DOCKER_HEADERS = {"Docker-Distribution-API-Version": "registry/2.0"}


class Dialect(enum.Enum):
    """Whose error shape a route answers in."""

    OLLAMA = "ollama"
    OPENAI = "openai"
    ANTHROPIC = "anthropic"
    DOCKER = "docker"

    @classmethod
    def of(cls, path: str) -> Dialect:
        """The dialect of a request path (Anthropic's routes sit inside OpenAI's /v1/)."""
        if path == ANTHROPIC_PATH or path.startswith(ANTHROPIC_PATH + "/"):
            return cls.ANTHROPIC
        if path.startswith("/v1/"):
            return cls.OPENAI
        if path == "/v2" or path.startswith("/v2/"):
            return cls.DOCKER
        return cls.OLLAMA


@dataclass(frozen=True)
class Names:
    """What one HTTP status is called in each protocol that names its errors."""

    openai: str  # OpenAI's "type" (Ollama's /v1 names: only 400 and 404 have their own)
    anthropic: str  # Anthropic's "type"
    docker: str  # the distribution spec's "code", unless the route gives a more precise one
    openai_code: str | None = None  # OpenAI's "code"


NAMES: dict[int, Names] = {
    400: Names("invalid_request_error", "invalid_request_error", "UNSUPPORTED"),
    401: Names("invalid_request_error", "authentication_error", "UNAUTHORIZED", openai_code="invalid_api_key"),
    403: Names("api_error", "permission_error", "DENIED"),
    404: Names("not_found_error", "not_found_error", "NAME_UNKNOWN"),
    405: Names("api_error", "api_error", "UNSUPPORTED"),
    413: Names("api_error", "request_too_large", "UNSUPPORTED"),
    429: Names("api_error", "rate_limit_error", "TOOMANYREQUESTS"),
    503: Names("api_error", "overloaded_error", "UNAVAILABLE"),
    529: Names("api_error", "overloaded_error", "UNAVAILABLE"),
}
OTHER = Names("api_error", "api_error", "UNKNOWN")  # every status not in NAMES (500, 408, 499, 507…)


def render_error(error: LlmhostError, dialect: Dialect, *, code: str | None = None,
                 detail: object = None) -> tuple[int, JsonObject]:
    """``(status, body)`` of ``error`` in ``dialect``; ``code`` and ``detail`` replace the table's
    code and Docker's empty detail where a route knows better (``MANIFEST_UNKNOWN``, ``{"Tag": …}``)."""
    names = NAMES.get(error.status, OTHER)
    if dialect is Dialect.OLLAMA:
        body: JsonObject = {"error": error.message}
    elif dialect is Dialect.OPENAI:
        body = {"error": {"message": error.message, "type": names.openai, "param": None,
                          "code": code or names.openai_code}}
    elif dialect is Dialect.ANTHROPIC:
        body = {"type": "error", "error": {"type": names.anthropic, "message": error.message}}
    else:
        body = {"errors": [{"code": code or names.docker, "message": error.message,
                            "detail": {} if detail is None else detail}]}
    return error.status, body


def error_response(error: LlmhostError, dialect: Dialect, *, code: str | None = None,
                   detail: object = None) -> web.Response:
    """``error`` as a whole HTTP answer in ``dialect`` (Docker's carry the registry API version)."""
    status, body = render_error(error, dialect, code=code, detail=detail)
    return web.json_response(body, status=status, headers=DOCKER_HEADERS if dialect is Dialect.DOCKER else None)


def in_band_error(error: Exception, dialect: Dialect) -> JsonObject:
    """The body of an error that ends a stream already begun (its status was sent: 200); a bug is
    logged with its trace, and told as a 500."""
    if not isinstance(error, LlmhostError):
        log.error("stream failed", exc_info=error)
    return render_error(as_error(error), dialect)[1]


def as_error(error: BaseException) -> LlmhostError:
    """An LlmhostError as it is; anything else (a bug, an OSError) as a 500 saying only what failed."""
    return error if isinstance(error, LlmhostError) else LlmhostError(internal_error_message(error))


def internal_error_message(error: BaseException) -> str:
    """What a client is told about a bug or an unexpected failure: never a file's path.

    An OSError's text names the file (``[Errno 36] File name too long: '/home/…/manifests/…'``),
    which would show a client where the store lives; the reason alone says what went wrong.
    """
    if isinstance(error, OSError):
        reason = error.strerror or type(error).__name__
        return f"internal error: {reason[:1].lower()}{reason[1:]}"
    return f"internal error: {error}"


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error becomes its status and the route's dialect's body; a bug becomes a 500, not a trace.

    The API-key check raises inside it, so a refusal comes in each protocol's shape too.
    """
    try:
        return await handler(request)
    except (web.HTTPException, ConnectionError):
        raise
    except LlmhostError as e:
        if e.status >= 500:
            log.warning("%s %s: %s", request.method, request.path, e.message)
        return error_response(e, Dialect.of(request.path))
    except Exception as e:
        log.exception("%s %s failed", request.method, request.path)
        return error_response(as_error(e), Dialect.of(request.path))
