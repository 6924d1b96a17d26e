"""An Ollama model store written the way Ollama writes one, for tests that point llmhost at it.

Layout (``~/.ollama/models``): ``blobs/sha256-<hex>`` and ``manifests/<host>/<namespace>/<model>/<tag>``.
JSON documents (manifests, config, params, messages) are what Go's ``json.NewEncoder(..).Encode``
writes: compact, ``<``/``>``/``&`` escaped, keys in struct order or sorted for maps, and a final
newline. Text layers (template, system, license) are the text's bytes.

    build_ollama_store(root, gguf) -> {name: OllamaModel}

Models (all on one GGUF blob, as library models of one family share theirs):

- ``registry.ollama.ai/library/chatty:latest``: a ``.Messages`` template with tools and thinking,
  plus system, params (a stop list), license and messages layers;
- ``registry.ollama.ai/library/legacy:7b``: an old ``.System``/``.Prompt``/``.Response`` template,
  a system layer and params, and a config with the ``rootfs`` older Ollama releases wrote;
- ``hf.co/someone/tiny-GGUF:Q4_K_M``: a model layer only (its GGUF's own template applies);
- ``registry.ollama.ai/library/tuned:latest``: chatty plus a LoRA ``adapter`` layer;
- ``registry.ollama.ai/library/seer:latest``: a ``projector`` layer beside the model (vision).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
CONFIG = "application/vnd.docker.container.image.v1+json"
LAYER = "application/vnd.ollama.image."

# Our own templates, in the shapes Ollama's library uses.
CHATTY_TEMPLATE = """{{- if or .System .Tools }}<|im_start|>system
{{ if .System }}{{ .System }}{{ end }}
{{- if .Tools }}

# Tools
<tools>
{{- range .Tools }}
{{ json . }}
{{- end }}
</tools>
Call a tool as <tool_call>{"name": ..., "arguments": ...}</tool_call>
{{- end }}<|im_end|>
{{ end }}
{{- range $i, $m := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 }}
{{- if eq .Role "user" }}<|im_start|>user
{{ .Content }}<|im_end|>
{{ else if eq .Role "assistant" }}<|im_start|>assistant
{{ if .Thinking }}<think>{{ .Thinking }}</think>
{{ end }}
{{- if .Content }}{{ .Content }}
{{- else if .ToolCalls }}<tool_call>
{{ range .ToolCalls }}{"name": "{{ .Function.Name }}", "arguments": {{ .Function.Arguments }}}
{{ end }}</tool_call>
{{- end }}{{ if not $last }}<|im_end|>
{{ end }}
{{- else if eq .Role "tool" }}<|im_start|>user
<tool_response>{{ .Content }}</tool_response><|im_end|>
{{ end }}
{{- if and (ne .Role "assistant") $last }}<|im_start|>assistant
{{ if and $.IsThinkSet (not $.Think) }}<think>

</think>

{{ end }}
{{- end }}
{{- end }}"""

LEGACY_TEMPLATE = """[INST] {{ if .System }}<<SYS>>{{ .System }}<</SYS>>

{{ end }}{{ .Prompt }} [/INST] {{ .Response }}</s>"""

CHATTY_SYSTEM = "You are Chatty, a small & friendly <model>."
LEGACY_SYSTEM = "Answer briefly."
CHATTY_PARAMS = {"stop": ["<|im_start|>", "<|im_end|>"], "temperature": 0.6, "num_ctx": 2048}
LEGACY_PARAMS = {"stop": ["[INST]", "[/INST]"], "repeat_penalty": 1.1}
CHATTY_MESSAGES = [{"role": "user", "content": "Who are you?"}, {"role": "assistant", "content": "I am Chatty."}]
LICENSE = "Chatty License\n\nUse it kindly."


@dataclass(frozen=True)
class OllamaModel:
    name: str  # host/namespace/model:tag
    manifest_path: Path
    layers: dict[str, str]  # media type suffix (model, template, ...) → digest


def go_json(value: Any) -> bytes:
    """What Go's json.Encoder writes for ``value`` (dicts in the order given: the caller orders
    struct fields as Go declares them and map keys sorted)."""
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    return (text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026") + "\n").encode()


def _blob(root: Path, data: bytes) -> tuple[str, int]:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    path = root / "blobs" / ("sha256-" + digest[7:])
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        path.write_bytes(data)
    return digest, len(data)


def _file_blob(root: Path, source: Path) -> tuple[str, int]:
    digest = "sha256:" + hashlib.sha256(source.read_bytes()).hexdigest()
    path = root / "blobs" / ("sha256-" + digest[7:])
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        try:
            os.link(source, path)
        except OSError:
            shutil.copyfile(source, path)
    return digest, source.stat().st_size


def config_document(*, rootfs: list[str] | None = None) -> dict[str, Any]:
    """Ollama's ConfigV2 for the tiny llama, fields in Go's order."""
    config: dict[str, Any] = {
        "model_format": "gguf", "model_family": "llama", "model_families": ["llama"],
        "model_type": "1.1M", "file_type": "F32", "architecture": "amd64", "os": "linux",
    }
    if rootfs is not None:
        config["rootfs"] = {"type": "layers", "diff_ids": rootfs}
    return config


def write_model(root: Path, name: str, layers: list[tuple[str, bytes | Path]], config: dict[str, Any]) -> OllamaModel:
    """Write one model: its blobs, its config blob and its manifest (at Ollama's path for ``name``)."""
    entries, digests = [], {}
    for kind, content in layers:
        digest, size = _file_blob(root, content) if isinstance(content, Path) else _blob(root, content)
        entries.append({"mediaType": LAYER + kind, "digest": digest, "size": size})
        digests[kind] = digest
    config_digest, config_size = _blob(root, go_json(config))
    manifest = {"schemaVersion": 2, "mediaType": MANIFEST,
                "config": {"mediaType": CONFIG, "digest": config_digest, "size": config_size}, "layers": entries}
    path_part, tag = name.rsplit(":", 1)
    path = root / "manifests" / path_part / tag
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(go_json(manifest))
    return OllamaModel(name, path, digests)


def build_ollama_store(root: Path, gguf: Path, adapter: Path | None = None,
                       projector: Path | None = None) -> dict[str, OllamaModel]:
    """The store described in the module docstring, under ``root``; ``adapter`` and ``projector``
    add ``tuned`` (chatty plus a LoRA layer) and ``seer`` (legacy plus a projector layer)."""
    chatty_layers: list[tuple[str, bytes | Path]] = [
        ("model", gguf),
        ("template", CHATTY_TEMPLATE.encode()),
        ("system", CHATTY_SYSTEM.encode()),
        ("params", go_json(dict(sorted(CHATTY_PARAMS.items())))),
        ("license", LICENSE.encode()),
        ("messages", go_json(CHATTY_MESSAGES)),
    ]
    models = {
        "chatty": write_model(root, "registry.ollama.ai/library/chatty:latest", chatty_layers, config_document()),
        "legacy": write_model(root, "registry.ollama.ai/library/legacy:7b", [
            ("model", gguf),
            ("template", LEGACY_TEMPLATE.encode()),
            ("system", LEGACY_SYSTEM.encode()),
            ("params", go_json(dict(sorted(LEGACY_PARAMS.items())))),
        ], config_document(rootfs=["sha256:" + "0" * 64])),
        "plain": write_model(root, "hf.co/someone/tiny-GGUF:Q4_K_M", [("model", gguf)], config_document()),
    }
    if adapter is not None:
        models["tuned"] = write_model(root, "registry.ollama.ai/library/tuned:latest",
                                      [*chatty_layers, ("adapter", adapter)], config_document())
    if projector is not None:
        models["seer"] = write_model(root, "registry.ollama.ai/library/seer:latest",
                                     [("model", gguf), ("projector", projector),
                                      ("template", LEGACY_TEMPLATE.encode())], config_document())
    return models


def store_files(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` with its bytes."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}
