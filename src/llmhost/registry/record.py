"""An installed model read back from the store: its layers decoded, its GGUF metadata read."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmhost.api.options import validate_options
from llmhost.errors import InvalidManifest, InvalidOption
from llmhost.registry import manifest as media
from llmhost.registry.gguf_meta import GGUFInfo, read_gguf_info
from llmhost.registry.manifest import Layer, Manifest
from llmhost.registry.names import ModelName

if TYPE_CHECKING:
    from llmhost.registry.store import Store

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelRecord:
    """Everything about one installed model that ``/api/show`` reports and a runner needs.

    ``template`` is the template layer's text (None when the model has none: the GGUF's own
    chat template applies, see ``chat_template``).
    """

    name: ModelName
    manifest: Manifest
    digest: str  # sha256 hex of the manifest bytes
    size: int
    modified_at: datetime
    model_path: Path  # the GGUF blob
    template: str | None
    system: str | None
    parameters: dict[str, Any]
    messages: list[dict[str, str]]
    license: list[str]
    info: GGUFInfo
    config: dict[str, Any]
    adapters: list[Path] = field(default_factory=list)
    projector_path: Path | None = None

    @property
    def chat_template(self) -> str | None:
        """The template to render chats with: the Modelfile's, else the GGUF's."""
        return self.template if self.template is not None else self.info.chat_template

    @property
    def runner_key(self) -> str:
        """Equal for copies of one model (the GGUF blob's digest), so they can share a runner."""
        layer = self.manifest.find(media.MODEL)
        assert layer is not None  # load_record refuses manifests without one
        return layer.digest

    def details(self) -> dict[str, Any]:
        """Ollama's ``details`` object for ``/api/show`` and ``/api/tags``."""
        return model_details(self.config, self.manifest, self.info)


def model_details(config: dict[str, Any], manifest: Manifest, info: GGUFInfo | None = None) -> dict[str, Any]:
    """``details`` from a model's config blob, falling back to GGUF metadata where one is given."""
    family = config.get("model_family") or (info.architecture if info else "")
    families = config.get("model_families") or ([family] if family else None)
    model_layer = manifest.find(media.MODEL)
    return {
        "parent_model": (model_layer.from_ if model_layer else None) or "",
        "format": config.get("model_format") or "gguf",
        "family": family,
        "families": families,
        "parameter_size": config.get("model_type") or (info.parameter_size if info else ""),
        "quantization_level": config.get("file_type") or (info.quantization if info else ""),
    }


def load_record(store: Store, name: ModelName) -> ModelRecord:
    """Read an installed model (``name`` already resolved) into a ModelRecord."""
    path = store.manifest_path(name)
    data = path.read_bytes()
    manifest = Manifest.parse(data)
    model = manifest.find(media.MODEL)
    if model is None:
        raise InvalidManifest(f"model '{name.display()}' has no GGUF model layer")
    projector = manifest.find(media.PROJECTOR)
    return ModelRecord(
        name=name,
        manifest=manifest,
        digest=hashlib.sha256(data).hexdigest(),
        size=manifest.size,
        modified_at=datetime.fromtimestamp(path.stat().st_mtime).astimezone(),
        model_path=store.model_path(manifest),
        template=_text(store, manifest.find(media.TEMPLATE) or manifest.find(media.PROMPT)),
        system=_text(store, manifest.find(media.SYSTEM)),
        parameters=_parameters(store, manifest.find(media.PARAMS)),
        messages=_messages(store, manifest.find(media.MESSAGES)),
        license=[_text(store, layer) or "" for layer in manifest.find_all(media.LICENSE)],
        info=read_gguf_info(store.blob_path(model.digest)),
        config=read_config(store, manifest),
        adapters=[store.blob_path(layer.digest) for layer in manifest.find_all(media.ADAPTER)],
        projector_path=store.blob_path(projector.digest) if projector else None,
    )


def read_config(store: Store, manifest: Manifest) -> dict[str, Any]:
    """The config blob as a dict ({} when it is not a JSON object)."""
    config = _json(store, manifest.config)
    return config if isinstance(config, dict) else {}


def _text(store: Store, layer: Layer | None) -> str | None:
    if layer is None:
        return None
    return _read(store, layer).decode("utf-8", "replace")


def _json(store: Store, layer: Layer | None) -> Any:
    if layer is None:
        return None
    try:
        return json.loads(_read(store, layer))
    except (ValueError, RecursionError):  # RecursionError: nested thousands deep
        log.warning("layer %s (%s) is not valid JSON; ignoring it", layer.digest, layer.media_type)
        return None


def _read(store: Store, layer: Layer) -> bytes:
    try:
        return store.read_blob(layer.digest)
    except FileNotFoundError:
        raise InvalidManifest(
            f'blob "{layer.digest}" ({layer.media_type}) is missing from the store; pull or create the model again'
        ) from None


def _parameters(store: Store, layer: Layer | None) -> dict[str, Any]:
    params = _json(store, layer)
    if not isinstance(params, dict):
        return {}
    try:
        return validate_options(params)  # drops keys this engine does not know, with a warning
    except InvalidOption as e:
        log.warning("ignoring malformed params layer %s: %s", layer.digest if layer else "", e)
        return {}


def _messages(store: Store, layer: Layer | None) -> list[dict[str, str]]:
    messages = _json(store, layer)
    if not isinstance(messages, list):
        return []
    return [
        {"role": m["role"], "content": m["content"]}
        for m in messages
        if isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
    ]
