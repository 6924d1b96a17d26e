"""Model names: Ollama's ``[host/][namespace/]model[:tag]`` grammar.

Every part is checked when a ``ModelName`` is built, so a name can always be turned into a store
path safely (no ``..``, no separators, each part short enough to be a file name).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import NamedTuple

from llmhost.errors import InvalidName

DEFAULT_HOST = "registry.ollama.ai"
DEFAULT_NAMESPACE = "library"
DEFAULT_TAG = "latest"

_PART = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
_HOST = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:-]*")
_NAMESPACE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]*")
_MAX_PART = 80  # Ollama's bound for namespace, model and tag
# Ollama allows 350, but each part is a directory or file name in the store, and a file system takes
# at most 255 bytes a name (NAME_MAX); the grammar is ASCII, so characters are bytes.
_MAX_HOST = 255


def _looks_like_host(part: str) -> bool:
    """Docker's rule for a two-part name: ``pypi.org/x`` and ``localhost:5000/x`` name a host."""
    return "." in part or ":" in part or part.lower() == "localhost"


@dataclass(frozen=True)
class ModelName:
    """A fully qualified model name; build one with ``ModelName.parse`` or with all four parts."""

    host: str
    namespace: str
    model: str
    tag: str

    def __post_init__(self) -> None:
        _validate(f"{self.host}/{self.namespace}/{self.model}:{self.tag}", self)

    @classmethod
    def parse(cls, text: str) -> ModelName:
        """Parse a user-typed name, filling in the defaults; raises InvalidName naming the problem."""
        if not isinstance(text, str) or not text.strip():
            raise InvalidName("invalid model name: the name is empty")
        raw = text.strip()
        body = raw.split("://", 1)[1] if "://" in raw else raw  # Ollama tolerates a scheme
        *prefix, last = body.split("/")
        model, sep, tag = last.partition(":")
        if sep and not tag:
            raise InvalidName(f'invalid model name "{raw}": the tag after ":" is empty')
        host, namespace = _split_prefix(raw, prefix)
        parts = _Parts(host, namespace, model, tag or DEFAULT_TAG)
        _validate(raw, parts)  # first, so the message quotes what the user typed
        return cls(*parts)

    def display(self) -> str:
        """Ollama's short form: ``model:tag``, ``namespace/model:tag`` or the full name."""
        if self.host == DEFAULT_HOST:
            if self.namespace == DEFAULT_NAMESPACE:
                return f"{self.model}:{self.tag}"
            return f"{self.namespace}/{self.model}:{self.tag}"
        return f"{self.host}/{self.namespace}/{self.model}:{self.tag}"

    def __str__(self) -> str:
        return self.display()

    def key(self) -> tuple[str, str, str, str]:
        """Lowercased parts: names are compared case-insensitively, as Ollama does."""
        return (self.host.lower(), self.namespace.lower(), self.model.lower(), self.tag.lower())

    def with_tag(self, tag: str) -> ModelName:
        return ModelName(self.host, self.namespace, self.model, tag)


class _Parts(NamedTuple):
    host: str
    namespace: str
    model: str
    tag: str


def _validate(text: str, parts: ModelName | _Parts) -> None:
    _check(text, "model", parts.model, _PART, _MAX_PART)
    _check(text, "tag", parts.tag, _PART, _MAX_PART)
    _check(text, "namespace", parts.namespace, _NAMESPACE, _MAX_PART)
    _check(text, "host", parts.host, _HOST, _MAX_HOST)


def _split_prefix(raw: str, prefix: list[str]) -> tuple[str, str]:
    if len(prefix) == 0:
        return DEFAULT_HOST, DEFAULT_NAMESPACE
    if len(prefix) == 1:
        if _looks_like_host(prefix[0]):
            return prefix[0], DEFAULT_NAMESPACE
        return DEFAULT_HOST, prefix[0]
    if len(prefix) == 2:
        return prefix[0], prefix[1]
    raise InvalidName(
        f'invalid model name "{raw}": too many "/" parts (expected [host/][namespace/]model[:tag])'
    )


def _check(text: str, what: str, value: str, pattern: re.Pattern[str], limit: int) -> None:
    if not isinstance(value, str) or not value:
        raise InvalidName(f'invalid model name "{text}": the {what} part is empty')
    if len(value) > limit:
        raise InvalidName(
            f'invalid model name "{text}": the {what} "{value[:20]}…" is longer than {limit} characters'
        )
    if pattern.fullmatch(value):
        return
    if what == "namespace" and "." in value:
        problem = "may not contain \".\" (only a host may)"
    elif not re.match(r"[A-Za-z0-9_]", value):
        problem = "must start with a letter, digit or underscore"
    else:
        allowed = "letters, digits, '_', '.', '-'" + (", ':'" if what == "host" else "")
        problem = f"may only contain {allowed}"
    raise InvalidName(f'invalid model name "{text}": the {what} "{value}" {problem}')
