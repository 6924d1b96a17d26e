"""Stored Responses conversations: one JSON file per response id under ``<models>/responses/``.

A stored response keeps the object the client received and the whole conversation behind it (native
messages up to and including the answer, without the turn's ``instructions``, which OpenAI does not
carry over). A turn with ``previous_response_id`` prepends that conversation, so the runner renders
the same prefix again and continues from the KV cache it already holds.

Each file holds the full conversation rather than a link to its parent: a turn reads one file, and
pruning an old response never breaks a newer one. The store is bounded by count and age (oldest
first); files are written atomically (temp + fsync + rename) and are private to the daemon's user.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmhost.errors import BadRequest, LlmhostError, NotFound
from llmhost.registry.store import TEMP_PREFIX

RESPONSES_DIR = "responses"
MAX_STORED = 1000  # responses kept; the oldest go first
MAX_AGE_SECONDS = 30 * 24 * 3600.0  # a response older than this is gone, as if deleted
_ID = re.compile(r"resp_[A-Za-z0-9]{1,100}")  # letters and digits only: an id never leaves the directory
_FORMAT = 1


def new_response_id() -> str:
    return "resp_" + secrets.token_hex(24)


def check_id(response_id: str) -> str:
    """``response_id`` if it can be one of ours (and so a file name); 400 otherwise."""
    if not isinstance(response_id, str) or not _ID.fullmatch(response_id):
        raise BadRequest(f"invalid response id {response_id!r}: expected 'resp_' followed by letters and digits")
    return response_id


@dataclass(frozen=True)
class StoredResponse:
    """A response as the client saw it, and the native conversation that continues from it."""

    response: dict[str, Any]
    messages: tuple[dict[str, Any], ...]

    @property
    def model(self) -> str:
        return str(self.response["model"])


class ResponseStore:
    """Stored responses in one directory, bounded by ``max_count`` and ``max_age`` (seconds).

    Blocking file work runs in a thread; the async methods are what route handlers call.
    """

    def __init__(self, directory: Path, max_count: int = MAX_STORED, max_age: float = MAX_AGE_SECONDS,
                 clock: Callable[[], float] = time.time):
        self.directory = Path(directory)
        self.max_count = max_count
        self.max_age = max_age
        self.clock = clock

    async def put(self, response_id: str, stored: StoredResponse) -> None:
        try:
            await asyncio.to_thread(self._put, check_id(response_id), stored)
        except OSError as e:  # disk full, permissions: the client must not count on a response that is not there
            raise LlmhostError(f"could not store response {response_id} in {self.directory}: "
                               f"{e.strerror or e}") from None

    async def get(self, response_id: str, what: str = "Response") -> StoredResponse:
        """The stored response; 404 naming ``what`` ("Response", "Previous response") when there is none."""
        return await asyncio.to_thread(self._get, check_id(response_id), what)

    async def delete(self, response_id: str) -> None:
        await asyncio.to_thread(self._delete, check_id(response_id))

    def _path(self, response_id: str) -> Path:
        return self.directory / f"{response_id}.json"

    def _put(self, response_id: str, stored: StoredResponse) -> None:
        data = json.dumps({"format": _FORMAT, "response": stored.response, "messages": list(stored.messages)},
                          ensure_ascii=False).encode()
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=TEMP_PREFIX)  # 0600: conversations are private
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            stamp = int(self.clock() * 1e9)  # the store's own clock orders and ages the files
            os.utime(tmp, ns=(stamp, stamp))
            os.replace(tmp, self._path(response_id))
        finally:
            Path(tmp).unlink(missing_ok=True)  # a no-op once renamed
        self._prune()

    def _get(self, response_id: str, what: str) -> StoredResponse:
        path = self._path(response_id)
        try:
            if self.clock() - path.stat().st_mtime > self.max_age:
                path.unlink(missing_ok=True)
                raise FileNotFoundError(path)
            raw = json.loads(path.read_bytes())
            return StoredResponse(raw["response"], tuple(raw["messages"]))
        except FileNotFoundError:
            raise NotFound(f"{what} with id '{response_id}' not found.") from None
        except (ValueError, KeyError, TypeError):  # damaged (not written by us: our writes are atomic)
            path.unlink(missing_ok=True)
            raise NotFound(f"{what} with id '{response_id}' not found (its stored file was damaged and "
                           "has been removed).") from None

    def _delete(self, response_id: str) -> None:
        try:
            self._path(response_id).unlink()
        except FileNotFoundError:
            raise NotFound(f"Response with id '{response_id}' not found.") from None

    def _prune(self) -> None:
        """Drop responses past ``max_age``, then the oldest beyond ``max_count``."""
        entries = []
        with os.scandir(self.directory) as listing:
            for entry in listing:
                if entry.name.endswith(".json") and not entry.name.startswith(TEMP_PREFIX):
                    try:
                        entries.append((entry.stat().st_mtime, entry.path))
                    except FileNotFoundError:  # deleted meanwhile
                        continue
        entries.sort()
        cutoff = self.clock() - self.max_age
        expired = [path for mtime, path in entries if mtime < cutoff]
        live = [path for mtime, path in entries if mtime >= cutoff]
        for path in expired + live[:max(0, len(live) - self.max_count)]:
            Path(path).unlink(missing_ok=True)
