"""Docker v2 manifests as Ollama writes them, and the digest check used everywhere.

A manifest is validated completely on parse, before any byte of it is stored or any digest in it
becomes a path: Probllama (CVE-2024-37032) wrote files through a digest of ``sha256:../../x``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, TypeGuard

from llmhost.errors import InvalidDigest, InvalidManifest

MANIFEST_V2 = "application/vnd.docker.distribution.manifest.v2+json"
CONFIG = "application/vnd.docker.container.image.v1+json"

_OLLAMA = "application/vnd.ollama.image."
MODEL = _OLLAMA + "model"
PROJECTOR = _OLLAMA + "projector"
ADAPTER = _OLLAMA + "adapter"
TEMPLATE = _OLLAMA + "template"
SYSTEM = _OLLAMA + "system"
PARAMS = _OLLAMA + "params"
MESSAGES = _OLLAMA + "messages"
LICENSE = _OLLAMA + "license"
PROMPT = _OLLAMA + "prompt"  # the legacy name of TEMPLATE

# Newer Ollama releases add layer kinds (draft, tensor, ...); accept any well-formed Ollama type so
# such models still list and delete, but nothing outside Ollama's namespace.
_OLLAMA_LAYER_TYPE = re.compile(r"application/vnd\.ollama\.image\.[a-z0-9][a-z0-9.+-]{0,63}")

_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
MAX_MANIFEST_BYTES = 4 * 1024 * 1024  # a real one is ~1 KB; the cap stops a hostile registry
MAX_LAYER_SIZE = 1 << 48  # 256 TiB: 100 times the largest model file; above is a lie, not a model


def size_mismatch(digest: str, listed: int, held: int) -> InvalidManifest:
    """The error for a manifest that gives a blob we hold (verified by its digest) another size."""
    return InvalidManifest(f"invalid manifest: it lists blob {digest} with {listed} bytes, "
                           f"but that blob has {held} bytes")


def check_digest(digest: Any) -> str:
    """Return ``digest`` if it is ``sha256:<64 lowercase hex>``, else raise InvalidDigest."""
    if not isinstance(digest, str) or not _DIGEST.fullmatch(digest):
        raise InvalidDigest(f"invalid digest {_quoted(digest)}: expected sha256:<64 hex>")
    return digest


def _quoted(value: Any) -> str:
    """Like Go's %q: quotes, with control characters escaped so a message stays on one line."""
    return json.dumps(value if isinstance(value, str) else str(value), ensure_ascii=False)


def is_digest(digest: Any) -> TypeGuard[str]:
    return isinstance(digest, str) and _DIGEST.fullmatch(digest) is not None


@dataclass(frozen=True)
class Layer:
    """One blob a manifest refers to; ``from_`` names the model it was inherited from, if any."""

    media_type: str
    digest: str
    size: int
    from_: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest, "size": self.size}
        if self.from_:
            out["from"] = self.from_
        return out


@dataclass(frozen=True)
class Manifest:
    """A schema-2 manifest: a config blob and the model's layers, in order."""

    config: Layer
    layers: tuple[Layer, ...]

    @classmethod
    def parse(cls, data: bytes) -> Manifest:
        """Validate and decode manifest bytes; raises InvalidManifest (400) on anything off."""
        if len(data) > MAX_MANIFEST_BYTES:
            raise InvalidManifest(f"invalid manifest: larger than {MAX_MANIFEST_BYTES} bytes")
        try:
            doc = json.loads(data)
        except (ValueError, UnicodeDecodeError) as e:
            raise InvalidManifest(f"invalid manifest: not JSON ({e})") from None
        except RecursionError:  # a manifest is four levels deep; thousands are an attack on the parser
            raise InvalidManifest("invalid manifest: JSON nested too deeply") from None
        if not isinstance(doc, dict):
            raise InvalidManifest("invalid manifest: expected a JSON object")
        if doc.get("schemaVersion") != 2 or isinstance(doc.get("schemaVersion"), bool):
            raise InvalidManifest(f"invalid manifest: schemaVersion must be 2, got {doc.get('schemaVersion')!r}")
        if doc.get("mediaType") != MANIFEST_V2:
            raise InvalidManifest(f'invalid manifest: mediaType must be "{MANIFEST_V2}", got {doc.get("mediaType")!r}')
        config = _parse_layer(doc.get("config"), "config")
        if config.media_type != CONFIG:
            raise InvalidManifest(f'invalid manifest: config mediaType must be "{CONFIG}", got "{config.media_type}"')
        raw_layers = doc.get("layers", [])
        if not isinstance(raw_layers, list):
            raise InvalidManifest("invalid manifest: layers must be a list")
        layers = tuple(_parse_layer(item, f"layers[{i}]") for i, item in enumerate(raw_layers))
        for i, layer in enumerate(layers):
            if not _OLLAMA_LAYER_TYPE.fullmatch(layer.media_type):
                raise InvalidManifest(f'invalid manifest: layers[{i}] has unsupported mediaType "{layer.media_type}"')
        return cls(config, layers)

    def to_bytes(self) -> bytes:
        """Compact JSON with Ollama's key order; the manifest digest is the sha256 of these bytes."""
        doc = {
            "schemaVersion": 2,
            "mediaType": MANIFEST_V2,
            "config": self.config.to_dict(),
            "layers": [layer.to_dict() for layer in self.layers],
        }
        return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()

    def all_layers(self) -> tuple[Layer, ...]:
        """Config first, then the layers: every blob this manifest needs."""
        return (self.config, *self.layers)

    def find(self, media_type: str) -> Layer | None:
        """The first layer of a media type (for single-valued kinds: model, template, system...)."""
        return next((layer for layer in self.layers if layer.media_type == media_type), None)

    def find_all(self, media_type: str) -> list[Layer]:
        return [layer for layer in self.layers if layer.media_type == media_type]

    @property
    def size(self) -> int:
        """Bytes of every blob, as ``/api/tags`` reports a model's size."""
        return sum(layer.size for layer in self.all_layers())


def _parse_layer(item: Any, where: str) -> Layer:
    if not isinstance(item, dict):
        raise InvalidManifest(f"invalid manifest: {where} must be an object")
    media_type = item.get("mediaType")
    if not isinstance(media_type, str) or not media_type:
        raise InvalidManifest(f"invalid manifest: {where} has no mediaType")
    digest = item.get("digest")
    if not is_digest(digest):
        raise InvalidManifest(
            f"invalid manifest: {where} has invalid digest {_quoted(digest)}: expected sha256:<64 hex>"
        )
    size = item.get("size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise InvalidManifest(f"invalid manifest: {where} size must be a non-negative integer, got {size!r}")
    if size > MAX_LAYER_SIZE:
        raise InvalidManifest(f"invalid manifest: {where} size {size} is larger than any model "
                              f"(at most {MAX_LAYER_SIZE} bytes)")
    from_ = item.get("from")
    if from_ is not None and not isinstance(from_, str):
        raise InvalidManifest(f"invalid manifest: {where} from must be a string")
    return Layer(media_type, digest, size, from_ or None)
