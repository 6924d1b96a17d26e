"""Host-header and CORS checks (DNS rebinding, CVE-2024-28224; browser origins).

When the daemon listens on loopback, a request whose Host header names anything but a local name is
refused: that is what a DNS-rebinding page in a browser would send. Browser origins get CORS headers
only when they are local (or app/extension schemes), never ``*``.
"""

from __future__ import annotations

import ipaddress
import re
import socket

from aiohttp import web

_LOCAL_SUFFIXES = (".localhost", ".local", ".internal")
_ORIGIN = re.compile(
    r"^(https?://(localhost|127\.0\.0\.1|0\.0\.0\.0|\[::1\])(:\d+)?"
    r"|app://.*|file://.*|tauri://.*|vscode-webview://.*|chrome-extension://.*|moz-extension://.*)$"
)


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


def origin_allowed(origin: str) -> bool:
    return bool(_ORIGIN.match(origin))


def make_security_middleware(check_host: bool):
    @web.middleware
    async def security(request: web.Request, handler):
        if check_host and request.transport is not None and _is_tcp(request) and not host_allowed(request.host):
            return web.json_response({"error": "forbidden host"}, status=403)
        origin = request.headers.get("Origin")
        allowed = origin is not None and origin_allowed(origin)
        if request.method == "OPTIONS" and origin is not None:
            if not allowed:
                return web.Response(status=403)
            return web.Response(status=204, headers=_cors_headers(origin, preflight=True))
        response = await handler(request)
        if allowed and not response.prepared:
            response.headers.update(_cors_headers(origin))
        return response

    return security


def _is_tcp(request: web.Request) -> bool:
    return request.transport.get_extra_info("peername") not in (None, "", b"")  # unix sockets have no peer


def _cors_headers(origin: str, preflight: bool = False) -> dict:
    headers = {"Access-Control-Allow-Origin": origin, "Vary": "Origin"}
    if preflight:
        headers["Access-Control-Allow-Methods"] = "GET, POST, PUT, PATCH, DELETE, HEAD, OPTIONS"
        headers["Access-Control-Allow-Headers"] = "Authorization, Content-Type, User-Agent, Accept, X-Requested-With"
    return headers
