"""``llm create NAME -f Modelfile``: parse the Modelfile here, upload local weights as blobs, and
let the daemon build the model from ``files`` (uploaded digests) or ``from`` (an existing model)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import typer

from llmhost.api.client import Client
from llmhost.cli import render
from llmhost.cli.session import connect
from llmhost.errors import BadRequest

HELP = "Create a model from a Modelfile."

HASH_BLOCK = 1024 * 1024
_PATH_PREFIXES = ("/", "./", "../", "~")


def command(
    ctx: typer.Context,
    name: str = typer.Argument(...),
    file: Path = typer.Option(None, "--file", "-f", help='Name of the Modelfile (default "Modelfile").'),
    quantize: str = typer.Option(None, "--quantize", "-q", help="Quantize the model to this level (e.g. q4_K_M)."),
) -> None:
    from llmhost.registry.modelfile import parse_modelfile

    path = _modelfile_path(file)
    modelfile = parse_modelfile(path.read_text(encoding="utf-8"))
    client = connect(ctx)
    body = request_body(client, modelfile, path.parent)
    render.progress_events(client.create(name, quantize=quantize, **body))


def _modelfile_path(file: Path | None) -> Path:
    path = (file or Path("Modelfile")).expanduser()
    if not path.is_file():
        if file is None:
            raise BadRequest("no Modelfile in this directory; pass one with -f")
        raise BadRequest(f"no such Modelfile: {path}")
    return path


def request_body(client: Client, modelfile: Any, base: Path) -> dict[str, Any]:
    """The ``/api/create`` fields for a parsed Modelfile, uploading local files as blobs first."""
    if not modelfile.from_:
        raise BadRequest("no FROM line in the Modelfile")
    body: dict[str, Any] = {
        "template": modelfile.template,
        "system": modelfile.system,
        "license": list(modelfile.license) or None,
        "parameters": dict(modelfile.parameters) or None,
        "messages": list(modelfile.messages) or None,
    }
    from llmhost.registry.modelfile import DRAFT_UNSUPPORTED

    if modelfile.drafts:
        raise BadRequest(f"DRAFT {modelfile.drafts[0]}: {DRAFT_UNSUPPORTED}")
    files: dict[str, str] = {}
    # As Ollama's: every FROM that is a file is uploaded into ``files`` (a second one is a vision
    # model's projector, told apart by the daemon from its GGUF metadata); one may name a model.
    for reference in [modelfile.from_, *modelfile.extra_from]:
        weights = local_file(reference, base)
        if weights is None and "from_" in body:
            raise BadRequest(f"FROM {reference}: only one FROM may name a model; the others must be GGUF files")
        if weights is None:
            body["from_"] = reference
        elif weights.name in files:  # ``files`` is keyed by file name, as Ollama's
            raise BadRequest(f"FROM {reference}: another FROM file is named {weights.name}; rename one")
        else:
            files[weights.name] = upload(client, weights)
    if files:
        body["files"] = files
    adapters = [_required_file(a, base) for a in modelfile.adapters or []]
    if adapters:
        body["adapters"] = {a.name: upload(client, a) for a in adapters}
    return body


def local_file(reference: str, base: Path) -> Path | None:
    """The file FROM names, relative to the Modelfile's directory; None when it names a model."""
    candidate = _path(reference, base)
    if candidate.is_dir():
        raise BadRequest(f"FROM {reference}: creating from a directory is not supported; name a .gguf file")
    if candidate.is_file():
        return candidate
    if reference.startswith(_PATH_PREFIXES) or reference.lower().endswith(".gguf"):
        raise BadRequest(f"FROM {reference}: no such file")
    return None


def _required_file(reference: str, base: Path) -> Path:
    path = _path(reference, base)
    if not path.is_file():
        raise BadRequest(f"ADAPTER {reference}: no such file")
    return path


def _path(reference: str, base: Path) -> Path:
    # normpath, not resolve: a symlink keeps its own name, which becomes the file's name in ``files``
    return Path(os.path.normpath(base / Path(reference).expanduser()))


def upload(client: Client, path: Path) -> str:
    """Hash ``path`` and upload it unless the daemon already has that blob; returns the digest."""
    size = path.stat().st_size
    digest = file_digest(path, size)
    if not client.blob_exists(digest):
        with render.transfer(f"copying file {digest[7:19]}", size) as advance:
            client.upload_blob(digest, path, progress=advance)
    return digest


def file_digest(path: Path, size: int) -> str:
    """``sha256:<hex>`` of a file, read in blocks (model files are gigabytes)."""
    import hashlib  # here, not at the CLI's start: only create hashes

    sha = hashlib.sha256()
    with render.transfer("hashing " + render.shorten(path.name, 24), size) as advance, open(path, "rb") as f:
        while block := f.read(HASH_BLOCK):
            sha.update(block)
            advance(len(block))
    return f"sha256:{sha.hexdigest()}"
