"""One exception tree for llmhost; every error knows its HTTP status.

    LlmhostError (500)                  anything unexpected but reported cleanly
    ├── BadRequest (400)                input a user can fix
    │   ├── InvalidName                 model name outside Ollama's grammar
    │   ├── InvalidDigest               digest not sha256:<64 hex>
    │   ├── DigestMismatch              uploaded/downloaded bytes do not hash to the digest
    │   ├── InvalidModelFile            not a GGUF, truncated, malformed
    │   ├── ModelfileError              "(line N): ..." from the Modelfile parser
    │   └── InvalidOption               option "x" must be of type ...
    ├── NotFound (404)
    │   └── ModelNotFound               model 'x' not found
    ├── Unauthorized (401)              no valid API key on a TCP request (LLMHOST_API_KEY)
    ├── ClientClosed (499)              the client went away
    ├── ServerBusy (503)                queue full
    ├── InsufficientMemory (500)        a model cannot fit even after eviction
    ├── RunnerError (500)               the runner process failed or died
    ├── AccessDenied (403)              a gated/private source refused us (a token is needed)
    ├── PullError (500)                 a source failed to deliver a model
    ├── PushError (500)                 a registry refused or failed an upload
    └── ConfigError                     malformed LLMHOST_* variable (daemon refuses to start)
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


class ModelfileError(BadRequest):
    pass


class InvalidOption(BadRequest):
    pass


class NotFound(LlmhostError):
    status = 404


class ModelNotFound(NotFound):
    def __init__(self, name: str):
        super().__init__(f"model '{name}' not found")
        self.name = name


class Unauthorized(LlmhostError):
    status = 401


class ClientClosed(LlmhostError):
    status = 499


class ServerBusy(LlmhostError):
    status = 503

    def __init__(self, message: str = "server busy, please try again.  maximum pending requests exceeded"):
        super().__init__(message)


class InsufficientMemory(LlmhostError):
    status = 500


class RunnerError(LlmhostError):
    status = 500


class AccessDenied(LlmhostError):
    status = 403


class PullError(LlmhostError):
    status = 500


class PushError(LlmhostError):
    status = 500


class ConfigError(LlmhostError):
    status = 500
