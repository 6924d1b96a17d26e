"""Small helpers every network source shares: capped reads, URLs safe to show, error text."""

from __future__ import annotations

from pathlib import Path

import aiohttp
from yarl import URL

from llmhost.errors import LlmhostError, PullError


async def read_capped(resp: aiohttp.ClientResponse, limit: int, what: str,
                      error: type[LlmhostError] = PullError) -> bytes:
    """The body, refused once it passes ``limit`` bytes (a hostile server's endless body)."""
    if resp.content_length is not None and resp.content_length > limit:
        raise error(f"{what} is larger than {limit} bytes; refusing it")
    body = bytearray()
    async for chunk in resp.content.iter_chunked(1 << 16):
        body += chunk
        if len(body) > limit:
            raise error(f"{what} is larger than {limit} bytes; refusing it")
    return bytes(body)


def redact(url: str) -> str:
    """The URL without user:password or query (index and CDN URLs often carry credentials)."""
    try:
        return str(URL(url).with_user(None).with_query(None))
    except (ValueError, TypeError):
        return "<url>"


def describe(error: BaseException) -> str:
    """An exception as one line of text a user can read."""
    text = str(error)
    return text.splitlines()[0] if text else type(error).__name__


def make_dir(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    return directory
