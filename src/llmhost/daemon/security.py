"""Host-header and CORS checks (DNS rebinding, CVE-2024-28224; browser origins); API keys on TCP.

When the daemon listens on loopback, a request whose Host header names anything but a local name is
refused: that is what a DNS-rebinding page in a browser would send. A request from a browser origin
that is not local (or an app scheme, or listed in LLMHOST_ORIGINS) is refused whatever its method;
allowed origins get CORS headers, never ``*``.

With LLMHOST_API_KEY set, every request that arrives over TCP must carry one of the keys; the unix
socket (mode 0600, so only its owner connects) needs none.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import re
import socket
from dataclasses import dataclass

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from llmhost.config import ApiKeys
from llmhost.daemon.dialects import Dialect, error_response
from llmhost.errors import AccessDenied, ConfigError, Unauthorized

_LOCAL_SUFFIXES = (".localhost", ".local", ".internal")
# Ollama's defaults (envconfig.AllowedOrigins), with IPv6 loopback added.
_DEFAULT_ORIGINS = (
    "http://localhost", "https://localhost", "http://localhost:*", "https://localhost:*",
    "http://127.0.0.1", "https://127.0.0.1", "http://127.0.0.1:*", "https://127.0.0.1:*",
    "http://0.0.0.0", "https://0.0.0.0", "http://0.0.0.0:*", "https://0.0.0.0:*",
    "http://[::1]", "https://[::1]", "http://[::1]:*", "https://[::1]:*",
    "app://*", "file://*", "tauri://*", "vscode-webview://*", "vscode-file://*",
)
# Typed request-storage keys are newer than some aiohttp 3.x releases we accept.
_ALLOWED_ORIGIN = web.RequestKey("allowed_origin", str) if hasattr(web, "RequestKey") else "allowed_origin"


def _host_only(host_header: str) -> str:
    host = host_header.strip().lower()
    if host.startswith("["):
        return host[1:].split("]", 1)[0]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def host_allowed(host_header: str | None) -> bool:
    if not host_header:
        return True
    host = _host_only(host_header)
    if host in ("localhost", socket.gethostname().lower()) or host.endswith(_LOCAL_SUFFIXES):
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return address.is_loopback or address.is_private or address.is_unspecified


# scheme://host[:port], the host a name or a bracketed IPv6 address; an origin has no path.
_ORIGIN = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*)://(?P<host>\[[0-9a-f:.]+\]|[^\[\]/:@?#]*)(?::(?P<port>[0-9*]+))?")


@dataclass(frozen=True)
class OriginPattern:
    """An allowed origin, matched part by part (never as text, where ``[::1]`` is a character class).

    As Ollama (gin's CORS with wildcards), ``*`` may stand for the whole origin, for everything after
    ``scheme://``, for the port, or for one run of characters in the host (``*.example.com``).
    """

    scheme: str
    host: str  # "*": any authority
    port: str | None  # None: no port; "*": any port

    @classmethod
    def parse(cls, text: str) -> OriginPattern:
        """ValueError for a pattern that is not ``scheme://host[:port]`` with wildcards in those places."""
        lowered = text.strip().lower()
        if lowered.endswith("://*"):
            return cls(lowered[:-4], "*", "*")
        match = _ORIGIN.fullmatch(lowered)
        port = match and match["port"]
        if not match or match["host"].count("*") > 1 or (port and port != "*" and not port.isdigit()):
            raise ValueError(f"invalid origin {text!r}: expected scheme://host[:port] ('*' for the port, "
                             "the whole host or part of it)")
        return cls(match["scheme"], match["host"], port)

    def matches(self, scheme: str, host: str, port: str | None) -> bool:
        if scheme != self.scheme:
            return False
        if self.host == "*" and self.port == "*":
            return True
        head, star, tail = self.host.partition("*")
        host_ok = (host.startswith(head) and host.endswith(tail) and len(host) >= len(head) + len(tail)
                   if star else host == self.host)
        return host_ok and (port is not None if self.port == "*" else port == self.port)


@functools.lru_cache(maxsize=8)
def _patterns(texts: tuple[str, ...]) -> tuple[OriginPattern | None, ...]:
    return tuple(None if text.strip() == "*" else OriginPattern.parse(text) for text in texts)


def origin_allowed(origin: str, extra: tuple[str, ...] = ()) -> bool:
    """Local origins and app schemes by default, plus LLMHOST_ORIGINS patterns (``*`` alone: any origin)."""
    patterns = _patterns((*_DEFAULT_ORIGINS, *extra))
    if None in patterns:
        return True
    match = _ORIGIN.fullmatch(origin.strip().lower())
    if not match or "*" in origin or (match["port"] is not None and not match["port"].isdigit()):
        return False
    parts = (match["scheme"], match["host"], match["port"])
    return any(pattern is not None and pattern.matches(*parts) for pattern in patterns)


def check_origins(extra: tuple[str, ...]) -> None:
    """ConfigError naming a malformed LLMHOST_ORIGINS pattern (the daemon then refuses to start)."""
    try:
        _patterns((*_DEFAULT_ORIGINS, *extra))
    except ValueError as e:
        raise ConfigError(f"LLMHOST_ORIGINS: {e}") from None


def make_security_middleware(check_host: bool, extra_origins: tuple[str, ...] = ()) -> Middleware:
    """Refuse foreign Host headers (on loopback) and foreign browser origins, on every method.

    A browser sends a "simple" cross-site POST without a preflight, so refusing only OPTIONS would
    still let any web page copy, push or delete models: every request with a foreign Origin is 403.
    A malformed ``extra_origins`` pattern is a ConfigError here, at start-up.
    """
    check_origins(extra_origins)

    @web.middleware
    async def security(request: web.Request, handler: Handler) -> web.StreamResponse:
        transport = request.transport
        if check_host and transport is not None and _is_tcp(transport) and not host_allowed(request.host):
            return _refuse(request, "forbidden host")
        origin = request.headers.get("Origin")
        if origin is None:
            return await handler(request)
        if not origin_allowed(origin, extra_origins):
            return _refuse(request, f"origin {origin} is not allowed (see LLMHOST_ORIGINS)")
        if request.method == "OPTIONS":
            return web.Response(status=204, headers=_cors_headers(origin, preflight=True))
        request[_ALLOWED_ORIGIN] = origin
        return await handler(request)

    return security


def make_api_key_middleware(keys: ApiKeys) -> Middleware:
    """Refuse (401) a TCP request without one of ``keys``, as ``Authorization: Bearer KEY`` or
    Anthropic's ``x-api-key: KEY``.

    It raises ``Unauthorized``, so it must sit inside the error middleware: each protocol then
    answers in its own error shape. Keys are compared in constant time and never logged.
    """

    @web.middleware
    async def api_key(request: web.Request, handler: Handler) -> web.StreamResponse:
        transport = request.transport
        if (transport is None or _is_tcp(transport)) and not keys.accepts(_presented_key(request)):
            raise Unauthorized("unauthorized: this server needs an API key "
                               "(send Authorization: Bearer <key>; see LLMHOST_API_KEY)")
        return await handler(request)

    return api_key


def _refuse(request: web.Request, message: str) -> web.Response:
    # Outside the error middleware (nothing behind it may run), so it renders the refusal itself.
    return error_response(AccessDenied(message), Dialect.of(request.path))


def _presented_key(request: web.Request) -> str:
    scheme, _, token = request.headers.get("Authorization", "").strip().partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return request.headers.get("x-api-key", "").strip()


async def add_cors_headers(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: streamed responses get their CORS headers before the first byte too."""
    origin = request.get(_ALLOWED_ORIGIN)
    if origin is not None:
        response.headers.update(_cors_headers(origin))


def _is_tcp(transport: asyncio.BaseTransport) -> bool:
    return transport.get_extra_info("peername") not in (None, "", b"")  # unix sockets have no peer


def _cors_headers(origin: str, preflight: bool = False) -> dict[str, str]:
    headers = {"Access-Control-Allow-Origin": origin, "Vary": "Origin"}
    if preflight:
        headers["Access-Control-Allow-Methods"] = "GET, POST, PUT, PATCH, DELETE, HEAD, OPTIONS"
        headers["Access-Control-Allow-Headers"] = "Authorization, Content-Type, User-Agent, Accept, X-Requested-With"
    return headers
