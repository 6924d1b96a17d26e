"""What a model can do, in Ollama's words: completion, vision, tools, insert, thinking, embedding;
and rerank, which Ollama lacks (a reranker GGUF: a classifier head under llama.cpp's RANK pooling).

Decided from cheap, cached facts only: the GGUF metadata (read once per file; the fill-in-middle
tokens are found then), the projector layer, and a scan of the chat template's text (cached per
template). ``/api/show`` lists the result and requests are gated on it with Ollama's 400 texts.

Unlike Ollama, ``insert`` also follows the vocabulary: a model whose tokens include fill-in-middle
markers (``<|fim_prefix|>``…, as llama.cpp finds them) can fill in the middle whatever its template.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum
from functools import lru_cache

from llmhost.engine.gotemplate import parsed as go_parsed
from llmhost.engine.gotemplate import thinking_tags as go_thinking_tags
from llmhost.engine.gotemplate.funcs import go_quote  # Go's %q, for Ollama's error texts
from llmhost.engine.templates import is_go_template
from llmhost.errors import BadRequest
from llmhost.registry.gguf_meta import GGUFInfo
from llmhost.registry.names import ModelName
from llmhost.registry.record import ModelRecord


class Capability(str, Enum):
    """Ollama's capability names (types/model/capability.go), in the order ``/api/show`` lists them."""

    COMPLETION = "completion"
    EMBEDDING = "embedding"
    VISION = "vision"
    TOOLS = "tools"
    INSERT = "insert"
    THINKING = "thinking"
    RERANK = "rerank"  # llmhost's: scores documents against a query (/api/rerank, /v1/rerank)


# llama.cpp architectures that only embed, for files that do not declare a pooling type.
EMBEDDING_ARCHITECTURES = frozenset({
    "bert", "nomic-bert", "nomic-bert-moe", "jina-bert-v2", "jina-bert-v3", "neo-bert", "modern-bert",
})
RANK_POOLING = 4  # llama.cpp's LLAMA_POOLING_TYPE_RANK, what converters write for rerankers


def capabilities(record: ModelRecord) -> list[str]:
    """The model's capabilities, e.g. ``["completion", "tools", "thinking"]``, ``["embedding"]`` or
    ``["rerank"]``."""
    info = record.info
    embedding = is_embedding_model(info)
    pooled = Capability.RERANK if is_reranker(info) else Capability.EMBEDDING
    found = [pooled if embedding else Capability.COMPLETION]
    # Only with a projector layer: llama.cpp reads images through a separate mmproj file, so a GGUF
    # with its vision encoder inside (Ollama's own engine reads ``<arch>.vision.*``) cannot see here.
    if record.projector_path is not None:
        found.append(Capability.VISION)
    if not embedding:  # a template cannot make an embedding model chat
        found += _template_capabilities(record)
    return [cap.value for cap in found]


def _template_capabilities(record: ModelRecord) -> list[Capability]:
    template = template_features(record.chat_template)
    found = [Capability.TOOLS] if template.tools else []
    if template.suffix or record.info.fim_tokens is not None:
        found.append(Capability.INSERT)
    if template.thinking:
        found.append(Capability.THINKING)
    return found


def is_embedding_model(info: GGUFInfo) -> bool:
    """Embedding-only: the file declares a pooling type (Ollama's rule) or the architecture only embeds."""
    return (info.metadata.get(f"{info.architecture}.pooling_type") is not None
            or info.architecture in EMBEDDING_ARCHITECTURES)


def is_reranker(info: GGUFInfo) -> bool:
    """The file declares RANK pooling: its pooled output is a relevance score, not a vector."""
    return info.metadata.get(f"{info.architecture}.pooling_type") == RANK_POOLING


def missing_capabilities(record: ModelRecord, needed: Iterable[str]) -> list[str]:
    """Those of ``needed`` the model lacks, in the order asked; ValueError for a name Ollama lacks."""
    have = capabilities(record)
    missing: list[str] = []
    for name in needed:
        Capability(name)  # an unknown name is a bug in the caller, not the user's input
        if name not in have and name not in missing:
            missing.append(name)
    return missing


def require(record: ModelRecord, needed: Iterable[str], model_name: str, *, action: str = "chat") -> None:
    """Raise BadRequest with Ollama's text when the model lacks any of ``needed``.

    ``model_name`` is the name as the request gave it; ``action`` ("chat" or "generate") names what
    a model that cannot complete at all refuses. Ollama's texts, in its order of checking:
    ``"qwen" does not support thinking``, ``"bert" does not support chat``, then the others after
    the model's full name, several joined by a newline (Go's errors.Join):
    ``registry.ollama.ai/library/smollm2:latest does not support tools``.
    """
    missing = missing_capabilities(record, needed)
    if not missing:
        return
    if Capability.THINKING.value in missing:  # Ollama refuses "think" before scheduling anything
        raise BadRequest(f"{go_quote(model_name)} does not support thinking")
    if Capability.COMPLETION.value in missing:
        raise BadRequest(f"{go_quote(model_name)} does not support {action}")
    raise BadRequest(f"{full_name(record.name)} does not support " + "\n".join(missing))


def thinking_levels(record: ModelRecord) -> bool:
    """Whether the template takes a thinking level (``reasoning_effort``, Go's ``.ThinkLevel``), so
    ``think: "high"`` means something beyond ``think: true``."""
    return template_features(record.chat_template).thinking_levels and not is_embedding_model(record.info)


def full_name(name: ModelName) -> str:
    """Ollama's ``model.Name.String()``: host, namespace, model and tag, never shortened."""
    return f"{name.host}/{name.namespace}/{name.model}:{name.tag}"




@dataclass(frozen=True)
class TemplateFeatures:
    """What a chat template (Jinja, or Go in Ollama's format) takes beyond messages."""

    tools: bool = False  # a ``tools`` variable (Go: ``.Tools``)
    suffix: bool = False  # a ``suffix`` variable (Go: ``.Suffix``): fill-in-the-middle
    thinking: bool = False  # a thinking switch or ``<think>`` markers
    thinking_levels: bool = False  # ``reasoning_effort`` (Go: ``.ThinkLevel``)


@lru_cache(maxsize=64)
def template_features(source: str | None) -> TemplateFeatures:
    """Scan a template's text (cached: the same template text comes with every request)."""
    if not source:
        return TemplateFeatures()
    if is_go_template(source):
        return _go_features(source)
    return _jinja_features(source)


# Ollama's thinking-marker rule (server/images.go chatTemplateHasThinkingSupport): both tags, or
# prior reasoning stripped by splitting at the closing tag.
def _has_think_markers(source: str) -> bool:
    if "<think>" in source and "</think>" in source:
        return True
    splits = "content.split('</think>')" in source or 'content.split("</think>")' in source
    return splits and "reasoning_content" not in source and "<SPECIAL_12>" not in source


_JINJA_CODE = re.compile(r"\{\{.*?\}\}|\{%.*?%\}", re.S)
_STRING = re.compile(r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"|`[^`]*`", re.S)  # backquotes: Go's raw strings
_NAME = re.compile(r"(?<![\w.])[A-Za-z_]\w*")
# Assignment targets (``set x``, ``for a, b``): what follows them is read, the targets are not.
_TARGETS = re.compile(r"\b(?:set|for)\s+[A-Za-z_]\w*(?:\s*,\s*[A-Za-z_]\w*)*")
_THINKING_SWITCHES = frozenset({"enable_thinking", "reasoning_effort", "thinking"})


def _jinja_features(source: str) -> TemplateFeatures:
    names = _jinja_variables(source)
    return TemplateFeatures(
        tools="tools" in names,
        suffix="suffix" in names,
        thinking=bool(names & _THINKING_SWITCHES) or _has_think_markers(source),
        thinking_levels="reasoning_effort" in names,
    )


def _jinja_variables(source: str) -> set[str]:
    """Names the template's code reads: ``tools`` in ``{% if tools %}`` (Llama 3's
    ``{% set tools = none %}`` after its own test counts), not ``message.tools`` nor text or strings."""
    code = " ".join(_TARGETS.sub(" ", _STRING.sub(" ", block)) for block in _JINJA_CODE.findall(source))
    return set(_NAME.findall(code))


def _go_features(source: str) -> TemplateFeatures:
    """Ollama's rules for a Go template: the names it reads (``.Tools``, ``.Suffix``,
    ``.ThinkLevel``), and thinking when markers surround ``.Thinking`` in its range over
    ``.Messages``. A template that does not parse has none (create refuses those)."""
    template = go_parsed(source)
    if template is None:
        return TemplateFeatures()
    open_tag, close_tag = go_thinking_tags(template)
    return TemplateFeatures(
        tools="tools" in template.vars,
        suffix="suffix" in template.vars,
        thinking=bool(open_tag and close_tag),
        thinking_levels="thinklevel" in template.vars,
    )
