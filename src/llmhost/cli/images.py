"""Image paths in a prompt, attached as Ollama's CLI does (for a model with vision): found, read,
checked, base64'd into ``images`` and taken out of the text. Shared by ``llm run`` and its REPL."""

from __future__ import annotations

import base64
import re
import sys

from llmhost.errors import BadRequest


def sees_images(info: dict) -> bool:
    """Whether image paths in a prompt are attached: the model has ``vision`` (as Ollama's CLI)."""
    return "vision" in (info.get("capabilities") or [])


# Ollama's CLI (cmd/interactive.go extractFileNames): a path that starts with /, ./ or \ (after an
# optional drive letter), may hold spaces and backslash-escaped characters, and ends in an image's
# extension. Text that only looks like one is left alone when no such file exists.
_IMAGE_PATH = re.compile(r"(?:[a-zA-Z]:)?(?:\./|/|\\)[\S\\ ]+?\.(?i:jpg|jpeg|png|webp)\b")
_ESCAPED = re.compile(r"\\([ ()\[\]{}$&;'\\*?~])")  # Ollama's normalizeFilePath: "\ " is " "...
_IMAGE_MAGIC = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n")  # JPEG, PNG; WebP: RIFF....WEBP


def image_paths(text: str) -> list[str]:
    """What looks like an image's path in ``text``, as written (escapes kept)."""
    return _IMAGE_PATH.findall(text)


def extract_images(prompt: str) -> tuple[str, list[str]]:
    """Ollama's ``extractFileData``: every image path in ``prompt`` naming a file is read (base64 for
    ``images``), said on stderr (``Added image '…'``) and taken out of the text."""
    images = []
    for found in image_paths(prompt):
        path = _ESCAPED.sub(r"\1", found)
        data = read_image(path)
        if data is None:
            continue
        sys.stderr.write(f"Added image '{path}'\n")
        prompt = prompt.replace(f"'{path}'", "").replace(f"'{found}'", "").replace(found, "")
        images.append(base64.b64encode(data).decode("ascii"))
    return prompt.strip(), images


def read_image(path: str) -> bytes | None:
    """The file's bytes; None when there is no such file. One that is not a JPEG, PNG or WebP image,
    or is larger than the daemon takes, is an error (as in Ollama's CLI, before anything is sent)."""
    from llmhost.api.types import MAX_IMAGE_BYTES

    try:
        with open(path, "rb") as f:
            data = f.read(MAX_IMAGE_BYTES + 1)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise BadRequest(f"couldn't process file '{path}': {e.strerror}") from None
    webp = data[:4] == b"RIFF" and data[8:12] == b"WEBP"
    if not (data.startswith(_IMAGE_MAGIC) or webp):
        raise BadRequest(f"couldn't process file '{path}': not a JPEG, PNG or WebP image")
    if len(data) > MAX_IMAGE_BYTES:
        raise BadRequest(f"couldn't process file '{path}': larger than {MAX_IMAGE_BYTES >> 20} MiB, "
                         "the most an image may be")
    return data
