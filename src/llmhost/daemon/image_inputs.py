"""Images as the foreign protocols send them → the native wire form (base64 text, as Ollama's ``images``).

OpenAI's ``image_url`` parts (and Responses' ``input_image``) carry a data URL; Anthropic's ``image``
blocks carry a ``source``. The daemon never fetches a URL for a client, so an http(s) URL is refused.
The texts are Ollama's (openai/openai.go ``decodeImageURL``, anthropic/anthropic.go
``resolveImageSource``). Size, count and the image itself are checked later, once, by the native
request (``api.types.images_field``) and the runner.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from llmhost.errors import BadRequest

_DATA_URL_TYPES = ("jpeg", "jpg", "png", "webp")


def image_from_url(url: Any) -> str:
    """An OpenAI ``image_url`` (a data URL, or bare base64 after ``data:;base64,``) → base64 text."""
    if not isinstance(url, str):
        raise BadRequest("invalid message format")
    if url.startswith(("http://", "https://")):
        raise BadRequest("image URLs are not currently supported, please use base64 encoded data instead")
    if url.startswith("data:;base64,"):
        data = url.removeprefix("data:;base64,")
    else:
        prefix = next((f"data:image/{t};base64," for t in _DATA_URL_TYPES
                       if url.startswith(f"data:image/{t};base64,")), None)
        if prefix is None:
            raise BadRequest("invalid image input")
        data = url.removeprefix(prefix)
    if not _decodes(data):
        raise BadRequest("invalid image input")
    return data


def image_url_of(part: dict[str, Any]) -> Any:
    """The URL of an ``image_url`` part: ``{"image_url": {"url": ...}}`` or ``{"image_url": "..."}``."""
    value = part.get("image_url")
    return value.get("url") if isinstance(value, dict) else value


def image_from_source(source: Any) -> str:
    """An Anthropic image block's ``source`` (only ``base64`` is served) → base64 text."""
    if not isinstance(source, dict):
        raise BadRequest("invalid image source")
    if source.get("type") != "base64":
        raise BadRequest(f"invalid image source type: {source.get('type')}. Only base64 images are supported.")
    data = source.get("data")
    if not isinstance(data, str) or not _decodes(data):
        raise BadRequest("invalid base64 image data")
    return data


def _decodes(text: str) -> bool:
    try:  # line breaks are skipped, as Go's decoder skips them
        base64.b64decode(text.replace("\r", "").replace("\n", ""), validate=True)
    except (binascii.Error, ValueError):
        return False
    return True
