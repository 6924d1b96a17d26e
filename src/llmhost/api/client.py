"""The one client of the daemon's Ollama API, used by the CLI and by tests.

Stdlib only (``http.client``), so the CLI starts fast. It talks to the daemon over its unix socket
and falls back to TCP ``settings.host`` when the socket is absent or refuses; over TCP it sends
the API key (LLMHOST_API_KEY) when one is set. Methods return parsed
JSON; streaming methods yield one dict per NDJSON line. An error body, or an ``{"error": ...}`` line
in a stream, raises the ``llmhost.errors`` class of the HTTP status (``errors.from_status``).
"""

from __future__ import annotations

import builtins
import http.client
import json
import os
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Literal, Protocol, overload

from llmhost.errors import ConnectionLost, DaemonUnreachable, LlmhostError, NotFound, from_status

if TYPE_CHECKING:  # for types only: the client imports little, so the CLI starts fast
    from llmhost.api.types import JsonObject
    from llmhost.config import ApiKeys

    # A typing construct only (building a Protocol class costs the CLI's start about a millisecond).
    class ClientConfig(Protocol):
        """What ``Client.from_settings`` reads: ``config.Settings`` and ``config.ClientSettings`` both have it."""

        @property
        def socket(self) -> str | os.PathLike[str] | None: ...

        @property
        def host(self) -> str: ...

        @property
        def api_keys(self) -> ApiKeys: ...


MAX_LINE = 8 * 1024 * 1024  # Ollama's NDJSON line limit
UPLOAD_BLOCK = 1024 * 1024


class _UnixConnection(http.client.HTTPConnection):
    """HTTP over a unix socket; the Host header says ``localhost``."""

    def __init__(self, path: str, timeout: float | None):
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect(self.path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


def _error_message(status: int, reason: str, body: bytes) -> str:
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    error = data.get("error") if isinstance(data, dict) else None
    if isinstance(error, str):
        return error
    if isinstance(error, dict):  # OpenAI's shape
        return str(error.get("message", error))
    text = body.decode("utf-8", "replace").strip()
    return text or f"{status} {reason}".strip()


def _lost(error: Exception) -> LlmhostError:
    return ConnectionLost(f"lost connection to the llmhost daemon: {error or type(error).__name__}")


def _parse(data: bytes) -> Any:
    try:
        return json.loads(data)
    except ValueError:
        raise LlmhostError(f"invalid response from the daemon: {data[:200]!r}") from None


def _json_object(document: object, what: str) -> JsonObject:
    """``document`` if it is a JSON object (what every answer and stream line of the API is)."""
    if not isinstance(document, dict):
        raise LlmhostError(f"invalid response from the daemon: {what} is not a JSON object")
    return document


def _body(**fields: Any) -> JsonObject:
    """A request body without the fields left at None."""
    return {k: v for k, v in fields.items() if v is not None}


class _ProgressReader:
    """A file wrapper that reports bytes read, so http.client can stream it and we see progress."""

    def __init__(self, file: BinaryIO, progress: Callable[[int], None] | None):
        self._file = file
        self._progress = progress

    def read(self, size: int = -1) -> bytes:
        data = self._file.read(size)
        if data and self._progress:
            self._progress(len(data))
        return data


class Client:
    """Synchronous client of one daemon; every call opens a fresh connection."""

    def __init__(self, socket_path: str | os.PathLike[str] | None, host: str, *, timeout: float | None = None,
                 api_key: str | None = None):
        self.socket_path = str(socket_path) if socket_path else None
        self.host = host
        self.timeout = timeout
        self._api_key = api_key  # sent over TCP only: the unix socket needs none
        self._use_tcp = False

    @classmethod
    def from_settings(cls, settings: ClientConfig, *, timeout: float | None = None) -> Client:
        return cls(settings.socket, settings.host, timeout=timeout, api_key=settings.api_keys.first)

    def describe(self) -> str:
        """Where this client looks for the daemon, for messages."""
        if self.socket_path:
            return f"{self.socket_path} or http://{self.host}"
        return f"http://{self.host}"

    # -- transport -------------------------------------------------------------------------------

    def _connect(self, timeout: float | None) -> http.client.HTTPConnection:
        if self.socket_path and not self._use_tcp:
            unix = _UnixConnection(self.socket_path, timeout)
            try:
                unix.connect()
                return unix
            except OSError:  # absent, stale, or not ours: TCP may still answer
                unix.close()
        host, _, port = self.host.rpartition(":")
        conn = http.client.HTTPConnection(host.strip("[]"), int(port), timeout=timeout)
        try:
            conn.connect()
        except OSError as e:
            conn.close()
            raise DaemonUnreachable(
                f"could not connect to the llmhost daemon at {self.describe()}: {e.strerror or e}"
            ) from None
        if self.socket_path:
            self._use_tcp = True
        return conn

    def _send(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        timeout: float | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        conn = self._connect(self.timeout if timeout is None else timeout)
        headers = dict(headers or {})
        if self._api_key and not isinstance(conn, _UnixConnection):
            headers["Authorization"] = f"Bearer {self._api_key}"
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
            headers.setdefault("Content-Type", "application/json")
        headers.setdefault("Accept", "application/x-ndjson, application/json")
        try:
            conn.request(method, path, body=body, headers=headers)
            response = conn.getresponse()
        except (OSError, http.client.HTTPException) as e:
            conn.close()
            raise _lost(e) from None
        except BaseException:
            conn.close()
            raise
        if response.status >= 400:
            try:
                data = response.read()
            finally:
                conn.close()
            raise from_status(response.status, _error_message(response.status, response.reason, data))
        return conn, response

    def _call(self, method: str, path: str, body: Any = None, *, timeout: float | None = None) -> object:
        """One request whose answer is a single JSON document (or nothing: None)."""
        conn, response = self._send(method, path, body, timeout=timeout)
        try:
            data = response.read()
        except (OSError, http.client.HTTPException) as e:
            raise _lost(e) from None
        finally:
            conn.close()
        if not data.strip():
            return None
        document = _parse(data)
        if isinstance(document, dict) and "error" in document and len(document) == 1:
            raise from_status(response.status, str(document["error"]))
        return document

    def _call_object(self, method: str, path: str, body: Any = None) -> JsonObject:
        """One request whose answer is a JSON object."""
        return _json_object(self._call(method, path, body), f"the answer to {path}")

    def _stream(self, method: str, path: str, body: Any = None) -> Iterator[JsonObject]:
        """Yield each NDJSON line; closing the generator closes the connection (the daemon cancels)."""
        conn, response = self._send(method, path, body)
        try:
            while True:
                try:
                    line = response.readline(MAX_LINE + 1)
                except (OSError, http.client.HTTPException) as e:
                    raise _lost(e) from None
                if not line:
                    return
                if len(line) > MAX_LINE and not line.endswith(b"\n"):
                    raise LlmhostError(f"response line longer than {MAX_LINE} bytes")
                if not line.strip():
                    continue
                chunk = _json_object(_parse(line), f"a line of {path}")
                if chunk.get("error") is not None:
                    raise from_status(response.status, str(chunk["error"]))
                yield chunk
        finally:
            conn.close()

    def _maybe_stream(self, path: str, body: JsonObject, stream: bool) -> Iterator[JsonObject] | JsonObject:
        body["stream"] = stream
        if stream:
            return self._stream("POST", path, body)
        return self._call_object("POST", path, body)

    # -- API -------------------------------------------------------------------------------------

    def heartbeat(self, timeout: float = 2.0) -> None:
        """Raise DaemonUnreachable unless an llmhost daemon answers ``GET /api/version`` (it names
        its own version under ``llmhost``; ``GET /`` says "Ollama is running", as Ollama's does)."""
        try:
            conn, response = self._send("GET", "/api/version", timeout=timeout)
            try:
                body = response.read()
            finally:
                conn.close()
        except (OSError, http.client.HTTPException, ConnectionLost) as e:
            raise DaemonUnreachable(f"the llmhost daemon at {self.describe()} did not answer: {e}") from None
        try:
            is_llmhost = "llmhost" in json.loads(body)
        except (ValueError, TypeError):
            is_llmhost = False
        if not is_llmhost:
            # Ollama answers on the same default port; driving it by mistake would be confusing.
            raise DaemonUnreachable(f"{self.describe()} answers, but it is not llmhost "
                                    "(is Ollama running there? set LLMHOST_HOST to another address)")

    def version(self) -> JsonObject:
        """``{"version": Ollama API version, "llmhost": llmhost's version}``."""
        return self._call_object("GET", "/api/version")

    def list(self) -> JsonObject:
        """``{"models": [...]}``, the local models (``/api/tags``)."""
        return self._call_object("GET", "/api/tags")

    def show(self, model: str, verbose: bool = False) -> JsonObject:
        """Modelfile, parameters, template, system, license, details, model_info, capabilities."""
        return self._call_object("POST", "/api/show", _body(model=model, verbose=verbose or None))

    def copy(self, source: str, destination: str) -> None:
        self._call("POST", "/api/copy", {"source": source, "destination": destination})

    def delete(self, model: str) -> None:
        self._call("DELETE", "/api/delete", {"model": model})

    def ps(self) -> JsonObject:
        """``{"models": [...]}``, the loaded models."""
        return self._call_object("GET", "/api/ps")

    def pull(self, model: str, insecure: bool = False) -> Iterator[JsonObject]:
        """Progress events: ``pulling manifest``, ``pulling <id>`` with digest/total/completed, ..., ``success``."""
        return self._stream("POST", "/api/pull", _body(model=model, insecure=insecure or None, stream=True))

    def push(self, model: str, insecure: bool = False) -> Iterator[JsonObject]:
        """Progress events: ``retrieving manifest``, ``pushing <id>`` with digest/total/completed, ``success``."""
        return self._stream("POST", "/api/push", _body(model=model, insecure=insecure or None, stream=True))

    def create(
        self,
        model: str,
        *,
        from_: str | None = None,
        files: dict[str, str] | None = None,
        adapters: dict[str, str] | None = None,
        template: str | None = None,
        system: str | None = None,
        license: str | builtins.list[str] | None = None,
        parameters: JsonObject | None = None,
        messages: builtins.list[JsonObject] | None = None,
        quantize: str | None = None,
    ) -> Iterator[JsonObject]:
        """Progress events of ``/api/create``, ending with ``success``."""
        body = _body(
            model=model, files=files, adapters=adapters, template=template, system=system,
            license=license, parameters=parameters, messages=messages, quantize=quantize, stream=True,
        )
        if from_ is not None:
            body["from"] = from_
        return self._stream("POST", "/api/create", body)

    def blob_exists(self, digest: str) -> bool:
        """Whether the daemon already holds the blob ``sha256:<hex>``."""
        try:
            conn, _ = self._send("HEAD", f"/api/blobs/{digest}")
        except NotFound:
            return False
        conn.close()
        return True

    def upload_blob(self, digest: str, path: str | os.PathLike[str],
                    progress: Callable[[int], None] | None = None) -> None:
        """Stream a file to ``/api/blobs/<digest>`` without reading it into memory."""
        size = Path(path).stat().st_size
        with open(path, "rb") as f:
            conn, response = self._send(
                "POST", f"/api/blobs/{digest}", _ProgressReader(f, progress),
                headers={"Content-Length": str(size), "Content-Type": "application/octet-stream"},
            )
        try:
            response.read()
        finally:
            conn.close()

    @overload
    def generate(self, model: str, prompt: str = ..., *, stream: Literal[True] = ..., system: str | None = ...,
                 template: str | None = ..., suffix: str | None = ..., raw: bool | None = ...,
                 format: str | JsonObject | None = ..., images: builtins.list[str] | None = ...,
                 options: JsonObject | None = ..., keep_alive: str | float | None = ...,
                 think: bool | str | None = ...) -> Iterator[JsonObject]: ...

    @overload
    def generate(self, model: str, prompt: str = ..., *, stream: Literal[False], system: str | None = ...,
                 template: str | None = ..., suffix: str | None = ..., raw: bool | None = ...,
                 format: str | JsonObject | None = ..., images: builtins.list[str] | None = ...,
                 options: JsonObject | None = ..., keep_alive: str | float | None = ...,
                 think: bool | str | None = ...) -> JsonObject: ...

    @overload
    def generate(self, model: str, prompt: str = ..., *, stream: bool, system: str | None = ...,
                 template: str | None = ..., suffix: str | None = ..., raw: bool | None = ...,
                 format: str | JsonObject | None = ..., images: builtins.list[str] | None = ...,
                 options: JsonObject | None = ..., keep_alive: str | float | None = ...,
                 think: bool | str | None = ...) -> Iterator[JsonObject] | JsonObject: ...

    def generate(
        self,
        model: str,
        prompt: str = "",
        *,
        stream: bool = True,
        system: str | None = None,
        template: str | None = None,
        suffix: str | None = None,
        raw: bool | None = None,
        format: str | JsonObject | None = None,
        images: builtins.list[str] | None = None,
        options: JsonObject | None = None,
        keep_alive: str | float | None = None,
        think: bool | str | None = None,
    ) -> Iterator[JsonObject] | JsonObject:
        """Completion chunks (``response``) when streaming, else the one final object."""
        body = _body(
            model=model, prompt=prompt, system=system, template=template, suffix=suffix, raw=raw,
            format=format, images=images, options=options, keep_alive=keep_alive, think=think,
        )
        return self._maybe_stream("/api/generate", body, stream)

    @overload
    def chat(self, model: str, messages: builtins.list[JsonObject], *, stream: Literal[True] = ...,
             format: str | JsonObject | None = ..., options: JsonObject | None = ...,
             keep_alive: str | float | None = ..., tools: builtins.list[JsonObject] | None = ...,
             think: bool | str | None = ...) -> Iterator[JsonObject]: ...

    @overload
    def chat(self, model: str, messages: builtins.list[JsonObject], *, stream: Literal[False],
             format: str | JsonObject | None = ..., options: JsonObject | None = ...,
             keep_alive: str | float | None = ..., tools: builtins.list[JsonObject] | None = ...,
             think: bool | str | None = ...) -> JsonObject: ...

    @overload
    def chat(self, model: str, messages: builtins.list[JsonObject], *, stream: bool,
             format: str | JsonObject | None = ..., options: JsonObject | None = ...,
             keep_alive: str | float | None = ..., tools: builtins.list[JsonObject] | None = ...,
             think: bool | str | None = ...) -> Iterator[JsonObject] | JsonObject: ...

    def chat(
        self,
        model: str,
        messages: builtins.list[JsonObject],
        *,
        stream: bool = True,
        format: str | JsonObject | None = None,
        options: JsonObject | None = None,
        keep_alive: str | float | None = None,
        tools: builtins.list[JsonObject] | None = None,
        think: bool | str | None = None,
    ) -> Iterator[JsonObject] | JsonObject:
        """Chat chunks (``message.content``) when streaming, else the one final object."""
        body = _body(
            model=model, messages=messages, format=format, options=options, keep_alive=keep_alive,
            tools=tools, think=think,
        )
        return self._maybe_stream("/api/chat", body, stream)

    def embed(
        self,
        model: str,
        input: str | builtins.list[str],
        *,
        truncate: bool | None = None,
        dimensions: int | None = None,
        options: JsonObject | None = None,
        keep_alive: str | float | None = None,
    ) -> JsonObject:
        """``{"model", "embeddings": [[...]], ...}``."""
        body = _body(
            model=model, input=input, truncate=truncate, dimensions=dimensions, options=options,
            keep_alive=keep_alive,
        )
        return self._call_object("POST", "/api/embed", body)
