"""Creating a model (``/api/create``): from uploaded GGUF blobs or from an installed model.

Everything is validated before the first write, so a refused request leaves the store as it was.
Synchronous: the daemon runs it in a thread and forwards ``progress`` events to the client.
"""

from __future__ import annotations

import logging
import math
import platform
from collections.abc import Callable, Mapping
from pathlib import PurePosixPath, PureWindowsPath
from typing import Any

from llmhost.api.options import merge_parameters, validate_options
from llmhost.engine.templates import check_template
from llmhost.errors import BadRequest, InvalidModelFile
from llmhost.registry import manifest as media
from llmhost.registry.gguf_meta import GGUFInfo, read_gguf_info
from llmhost.registry.manifest import Layer, Manifest, check_digest
from llmhost.registry.names import ModelName
from llmhost.registry.record import ModelRecord
from llmhost.registry.store import Store

log = logging.getLogger(__name__)

_PLATFORM_ARCH = {"x86_64": "amd64", "aarch64": "arm64"}  # Go's names, as in Ollama's config
Progress = Callable[[dict[str, Any]], None]
_ROLES = ("system", "user", "assistant")
# Layers a new model inherits from its base unless the request replaces them.
_REPLACEABLE = {
    "template": (media.TEMPLATE, media.PROMPT),
    "system": (media.SYSTEM,),
    "messages": (media.MESSAGES,),
}


def create_model(
    store: Store,
    name: ModelName | str,
    *,
    from_: str | None = None,
    files: Mapping[str, str] | None = None,
    adapters: Mapping[str, str] | None = None,
    template: str | None = None,
    system: str | None = None,
    license: str | list[str] | None = None,
    parameters: Mapping[str, Any] | None = None,
    messages: list[dict[str, Any]] | None = None,
    progress: Progress | None = None,
) -> ModelName:
    """Create ``name`` with Ollama's semantics and return it.

    ``files`` maps relative file names to digests of blobs already uploaded (``POST /api/blobs``);
    ``from_`` names an installed model whose layers are reused (its parameters merged with the new
    ones). A file that is a multimodal projector (``GGUFInfo.is_projector``) becomes the projector
    layer, beside the model file or, with ``from_``, in place of the base model's projector.
    Raises BadRequest (and subclasses) or ModelNotFound; nothing is written in those cases.
    """
    emit = progress or (lambda event: None)
    name = name if isinstance(name, ModelName) else ModelName.parse(name)
    if template is not None:
        check_template(template)  # a Go or Jinja template that cannot run is refused now, with its position
    params = validate_options(dict(parameters)) if parameters else {}
    new_messages = _check_messages(messages)
    licenses = _check_licenses(license)
    # GGUF metadata is read before the store lock is taken, so a slow file never holds up copies and
    # deletes; write_manifest checks under the lock that every blob is still there.
    if from_ and files:
        base_layers, base_params, info = _layers_from_model(store, from_, _projector_only(store, files, emit))
    elif files:
        base_layers, base_params, info = _layers_from_files(store, files, emit)
    elif from_:
        base_layers, base_params, info = _layers_from_model(store, from_)
    else:
        raise BadRequest('neither "from" nor "files" was specified')
    with store.assembling():
        adapter_digests = _checked_files(store, adapters or {}).values()
        adapter_layers = [Layer(media.ADAPTER, d, store.blob_size(d)) for d in adapter_digests]
        overrides = {"template": template, "system": system, "messages": new_messages}
        layers = [layer for layer in base_layers if not _replaced(layer, overrides)] + adapter_layers
        layers += _new_layers(store, template, system, new_messages, licenses)
        all_params = merge_parameters(base_params, params)
        if all_params:
            layers.append(store.write_json_blob(all_params, media.PARAMS))
        manifest = Manifest(write_config(store, info), tuple(_dedupe(layers)))
        for layer in manifest.layers:
            emit({"status": f"{'using existing' if layer in base_layers else 'creating new'} layer {layer.digest}"})
        emit({"status": "writing manifest"})
        store.write_manifest(name, manifest)
    emit({"status": "success"})
    return name


def write_config(store: Store, info: GGUFInfo, extra: Mapping[str, Any] | None = None) -> Layer:
    """Write the config blob Ollama keeps beside the layers (``/api/tags`` details come from it)."""
    config = {
        "model_format": "gguf",
        "model_family": info.architecture,
        "model_families": [info.architecture],
        "model_type": info.parameter_size,
        "file_type": info.quantization,
        "architecture": _PLATFORM_ARCH.get(platform.machine().lower(), platform.machine().lower()),
        "os": "linux",
        **(extra or {}),
    }
    return store.write_json_blob(config, media.CONFIG)


def manifest_for_gguf(store: Store, digest: str, *, extra_config: Mapping[str, Any] | None = None) -> Manifest:
    """A manifest for a GGUF blob already in the store (for pull sources); validates the GGUF first.

    Template and parameters come from the GGUF itself, so the model is the only layer.
    ``extra_config`` adds keys to the config blob (a source records where the file came from).
    """
    info = read_gguf_info(store.blob_path(digest))
    check_loadable(info)
    model = Layer(media.MODEL, digest, store.blob_size(digest))
    return Manifest(write_config(store, info, extra_config), (model,))


def check_loadable(info: GGUFInfo) -> None:
    """Refuse (InvalidModelFile, 400) a model file llama.cpp would abort on, where its metadata shows it:
    non-finite hyper-parameters, zero layers, context or width, no tensors or fewer than its layers need.

    Projectors are not models; a split model's first part may hold no tensors, so they are not counted.
    """
    if info.is_projector:
        return
    _check_hyperparameters(info.metadata, info.architecture)
    split = info.metadata.get("split.count")
    if isinstance(split, int) and split > 1:
        return
    if info.tensor_count == 0:
        raise InvalidModelFile("invalid model file: it holds no tensors (no weights)")
    layers = info.block_count or 0
    if info.tensor_count <= layers:  # every layer has a tensor, and there is a token embedding
        raise InvalidModelFile(f"invalid model file: {info.tensor_count} tensors are too few for "
                               f"{info.architecture}.block_count = {layers} layers and the token embedding")


def _check_hyperparameters(meta: Mapping[str, Any], arch: str) -> None:
    for key, value in meta.items():
        if key.startswith(arch + ".") and not _finite(value):
            raise InvalidModelFile(f"invalid model file: {key} is {value}, which llama.cpp cannot run with")
    for name in ("block_count", "context_length", "embedding_length"):
        value = meta.get(f"{arch}.{name}")
        if isinstance(value, int) and value <= 0:
            raise InvalidModelFile(f"invalid model file: {arch}.{name} is {value}; it must be at least 1")


def _finite(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    return all(_finite(item) for item in value) if isinstance(value, tuple) else True


def _layers_from_files(store: Store, files: Mapping[str, str], emit: Progress) -> tuple[list[Layer], dict, GGUFInfo]:
    model: tuple[Layer, GGUFInfo] | None = None
    projector: Layer | None = None
    for file_name, layer, info in _gguf_layers(store, files, emit):
        if layer.media_type == media.PROJECTOR:
            projector = _one_projector(projector, layer, file_name)
        elif model is not None:
            raise BadRequest(f'more than one model file in "files" ("{file_name}"); give one GGUF model')
        else:
            check_loadable(info)
            model = (layer, info)
    if model is None:
        raise BadRequest('"files" holds no GGUF model (only projectors)')
    return [model[0], *([projector] if projector else [])], {}, model[1]


def _projector_only(store: Store, files: Mapping[str, str], emit: Progress) -> Layer:
    """The projector that ``files`` holds beside ``from`` (a Modelfile's second FROM): nothing else."""
    projector: Layer | None = None
    for file_name, layer, _ in _gguf_layers(store, files, emit):
        if layer.media_type != media.PROJECTOR:
            raise BadRequest(f'specify either "from" or "files", not both: "{file_name}" is a model, '
                             "and only a projector may come beside an installed model")
        projector = _one_projector(projector, layer, file_name)
    assert projector is not None  # files is not empty
    return projector


def _gguf_layers(store: Store, files: Mapping[str, str], emit: Progress) -> list[tuple[str, Layer, GGUFInfo]]:
    """Each file's layer (model or projector, told by its metadata) and GGUF metadata."""
    checked = _checked_files(store, files)
    emit({"status": "parsing GGUF"})
    layers = []
    for file_name, digest in checked.items():
        if not file_name.lower().endswith(".gguf"):
            raise BadRequest(f'file "{file_name}" is not a GGUF file; only GGUF models are supported')
        info = read_gguf_info(store.blob_path(digest))
        if info.is_projector and info.tensor_count == 0:
            raise InvalidModelFile(f'invalid projector file "{file_name}": it holds no tensors (no weights)')
        kind = media.PROJECTOR if info.is_projector else media.MODEL
        # sizes from the parsed file: outside the store lock, a blob's stat could race a delete
        layers.append((file_name, Layer(kind, digest, info.file_size), info))
    return layers


def _one_projector(found: Layer | None, layer: Layer, file_name: str) -> Layer:
    if found is not None and found.digest != layer.digest:  # a runner takes one (llama.cpp's --mmproj)
        raise BadRequest(f'more than one projector in "files" ("{file_name}"); give one projector GGUF')
    return layer


def _layers_from_model(store: Store, from_: str, projector: Layer | None = None) -> tuple[list[Layer], dict, GGUFInfo]:
    base: ModelRecord = store.load(from_)
    origin = base.name.display()
    layers = [
        Layer(layer.media_type, layer.digest, layer.size, layer.from_ or origin)
        if layer.media_type == media.MODEL else layer
        for layer in base.manifest.layers
        # params are re-written merged with the new parameters; a new projector replaces the base's
        if layer.media_type != media.PARAMS and not (projector and layer.media_type == media.PROJECTOR)
    ]
    return layers + ([projector] if projector else []), base.parameters, base.info


def _checked_files(store: Store, files: Mapping[str, str]) -> dict[str, str]:
    if not isinstance(files, Mapping):
        raise BadRequest('"files" must map file names to blob digests')
    for file_name, digest in files.items():
        _check_relative(file_name)
        check_digest(digest)
        if not store.has_blob(digest):
            raise BadRequest(
                f'blob "{digest}" for file "{file_name}" not found; upload it first (POST /api/blobs/{digest})'
            )
    return dict(files)


def _check_relative(file_name: Any) -> None:
    """Only plain relative names, never a server path (CVE-2024-39719, ZipSlip)."""
    if not isinstance(file_name, str) or not file_name or "\x00" in file_name:
        raise BadRequest(f"file path must be relative: {file_name!r}")
    posix, windows = PurePosixPath(file_name), PureWindowsPath(file_name)
    if posix.is_absolute() or windows.is_absolute() or windows.drive or ".." in posix.parts or ".." in windows.parts:
        raise BadRequest(f"file path must be relative: {file_name!r}")


def _check_messages(messages: Any) -> list[dict[str, str]] | None:
    if messages is None:
        return None
    if not isinstance(messages, list):
        raise BadRequest('"messages" must be a list of {"role", "content"} objects')
    checked = []
    for i, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        content = message.get("content") if isinstance(message, dict) else None
        if not isinstance(role, str) or role.lower() not in _ROLES:
            raise BadRequest(f'messages[{i}]: role must be one of "system", "user", or "assistant"')
        if not isinstance(content, str):
            raise BadRequest(f"messages[{i}]: content must be a string")
        checked.append({"role": role.lower(), "content": content})
    return checked


def _check_licenses(license: Any) -> list[str]:
    licenses = [license] if isinstance(license, str) else license or []
    if not isinstance(licenses, list) or not all(isinstance(text, str) for text in licenses):
        raise BadRequest('"license" must be a string or a list of strings')
    return licenses


def _replaced(layer: Layer, overrides: dict[str, Any]) -> bool:
    return any(value is not None and layer.media_type in _REPLACEABLE[key] for key, value in overrides.items())


def _new_layers(
    store: Store, template: str | None, system: str | None, messages: list | None, licenses: list[str]
) -> list[Layer]:
    layers = []
    if template is not None:
        layers.append(store.write_bytes_blob(template.encode(), media.TEMPLATE))
    if system is not None:
        layers.append(store.write_bytes_blob(system.encode(), media.SYSTEM))
    if messages:
        layers.append(store.write_json_blob(messages, media.MESSAGES))
    for text in licenses:
        layers.append(store.write_bytes_blob(text.encode(), media.LICENSE))
    return layers


def _dedupe(layers: list[Layer]) -> list[Layer]:
    seen: set[tuple[str, str]] = set()
    out = []
    for layer in layers:
        if (layer.media_type, layer.digest) not in seen:
            seen.add((layer.media_type, layer.digest))
            out.append(layer)
    return out
