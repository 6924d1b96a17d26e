"""The model store, in Ollama's layout so an Ollama store can be used in place.

    <root>/manifests/<host>/<namespace>/<model>/<tag>   a Docker v2 manifest (JSON)
    <root>/blobs/sha256-<64 hex>                        content-addressed blobs

Every write is atomic: a temp file in the same directory, fsync, rename. A blob is hashed while it is
written and renamed into place only if it matches its digest; a manifest is written only when every
blob it names exists. Paths are built only from validated digests and ``ModelName`` parts.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO, Any, Protocol, runtime_checkable

from llmhost.errors import DigestMismatch, InvalidManifest, InvalidName, MissingBlob, ModelNotFound, NoSpace
from llmhost.registry.manifest import MODEL, Layer, Manifest, check_digest
from llmhost.registry.names import ModelName
from llmhost.registry.record import ModelRecord, load_record, model_details, read_config
from llmhost.units import format_size

log = logging.getLogger(__name__)

CHUNK = 1 << 20
SPLITS_DIR = "splits"  # hard links that give a split model's parts the names llama.cpp expects
TEMP_PREFIX = ".tmp-"  # never a valid blob or name part, so listings skip these
_DIGEST_IN_TEXT = re.compile(rb"sha256:[0-9a-f]{64}")


@runtime_checkable
class Readable(Protocol):
    """A binary file, or anything that reads like one (a wheel member counted as it is read)."""

    def read(self, size: int = -1, /) -> bytes: ...


@dataclass(frozen=True)
class ModelEntry:
    """One installed model as ``/api/tags`` lists it."""

    name: ModelName
    digest: str  # sha256 hex of the manifest bytes (Ollama's model "ID")
    size: int  # bytes of config + layers
    modified_at: datetime  # manifest mtime, timezone-aware
    manifest: Manifest
    details: dict[str, Any]  # Ollama's details object, from the config blob


class Store:
    """Blobs and manifests under one root directory; safe to use from several threads."""

    def __init__(self, root: Path | str):
        self.root = Path(root)
        self.blobs_dir = self.root / "blobs"
        self.manifests_dir = self.root / "manifests"
        # Serialises manifest changes and the blob pruning that follows them.
        self._lock = threading.RLock()

    # ---- blobs -------------------------------------------------------------------------------

    def blob_path(self, digest: str) -> Path:
        """Where a blob lives; the digest is validated first (never lets ``../`` into a path)."""
        return self.blobs_dir / ("sha256-" + check_digest(digest)[7:])

    def has_blob(self, digest: str) -> bool:
        return self.blob_path(digest).is_file()

    def blob_size(self, digest: str) -> int:
        return self.blob_path(digest).stat().st_size

    def write_blob(self, source: Iterable[bytes] | Readable, expected_digest: str | None = None) -> tuple[str, int]:
        """Store bytes from an iterable of chunks or a binary file; returns (digest, size).

        With ``expected_digest`` the bytes must hash to it, else DigestMismatch and nothing is kept.
        """
        with self.blob_writer(expected_digest) as writer:
            for chunk in _chunks(source):
                writer.write(chunk)
            return writer.commit()

    def blob_writer(self, expected_digest: str | None = None) -> BlobWriter:
        """A blob written piece by piece (an upload fed from the event loop); see ``BlobWriter``."""
        if expected_digest is not None:
            check_digest(expected_digest)
        return BlobWriter(self, expected_digest)

    def check_space(self, needed: int, what: str) -> None:
        """Refuse (NoSpace) before anything is written when the disk has fewer than ``needed`` bytes free."""
        self.blobs_dir.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(self.blobs_dir).free
        if needed > free:
            raise NoSpace(f"no space left on device for {what}: needs {format_size(needed)}, "
                          f"{format_size(free)} free")

    def import_file(self, path: Path | str) -> tuple[str, int]:
        """Copy a local file into the store (hashing as it copies); returns (digest, size)."""
        with open(path, "rb") as f:
            return self.write_blob(f)

    def write_bytes_blob(self, data: bytes, media_type: str) -> Layer:
        """Store a small blob (template, system prompt, license) and describe it as a layer."""
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        if not self.has_blob(digest):
            self.write_blob([data], digest)
        return Layer(media_type, digest, len(data))

    def write_json_blob(self, obj: Any, media_type: str) -> Layer:
        """Store a JSON document (params, messages, config) as a blob and describe it as a layer."""
        return self.write_bytes_blob(json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode(), media_type)

    def read_blob(self, digest: str, limit: int = 16 << 20) -> bytes:
        """A small blob's bytes; a blob larger than ``limit`` is refused rather than read whole."""
        path = self.blob_path(digest)
        with open(path, "rb") as f:
            data = f.read(limit + 1)
        if len(data) > limit:
            raise InvalidManifest(f"blob {digest} is larger than {limit} bytes; expected a small text or JSON layer")
        return data

    # ---- manifests ---------------------------------------------------------------------------

    def manifest_path(self, name: ModelName) -> Path:
        return self.manifests_dir / name.host / name.namespace / name.model / name.tag

    def resolve(self, name: ModelName | str) -> ModelName:
        """The installed model matching ``name`` case-insensitively; raises ModelNotFound."""
        name = _as_name(name)
        if self.manifest_path(name).is_file():
            return name
        wanted = name.key()
        for found, _ in self._walk_manifests():
            if found.key() == wanted:
                return found
        raise ModelNotFound(name.display())

    def read_manifest(self, name: ModelName | str) -> Manifest:
        """The manifest of an installed model (looked up case-insensitively)."""
        return Manifest.parse(self.manifest_path(self.resolve(name)).read_bytes())

    def write_manifest(self, name: ModelName | str, manifest: Manifest) -> list[str]:
        """Install ``manifest`` as ``name``, replacing any model of that name (in any case).

        Refuses (MissingBlob) if a blob it names is absent. Returns the digests of blobs the replaced
        manifest used that nothing references any more, which are deleted.
        """
        return self._install(_as_name(name), manifest.to_bytes(), manifest)

    def list_models(self) -> list[ModelEntry]:
        """Every installed model, newest first; unreadable manifests are skipped with a warning."""
        entries = []
        for name, path in self._walk_manifests():
            try:
                data = path.read_bytes()
                mtime = path.stat().st_mtime
                manifest = Manifest.parse(data)
            except (OSError, InvalidManifest) as e:
                log.warning("skipping manifest %s: %s", path, e)
                continue
            digest = hashlib.sha256(data).hexdigest()
            modified = datetime.fromtimestamp(mtime).astimezone()
            details = model_details(self._config_or_empty(manifest), manifest)
            entries.append(ModelEntry(name, digest, manifest.size, modified, manifest, details))
        entries.sort(key=lambda e: e.modified_at, reverse=True)
        return entries

    def copy(self, src: ModelName | str, dst: ModelName | str) -> ModelName:
        """Install ``src``'s manifest as ``dst`` too (bytes unchanged, so blobs and digest are shared)."""
        dst = _as_name(dst)
        with self._lock:
            path = self.manifest_path(self.resolve(src))
            data = path.read_bytes()
            self._install(dst, data, Manifest.parse(data))
        return dst

    def delete(self, name: ModelName | str) -> list[str]:
        """Remove a model; blobs no other manifest references are deleted too (their digests returned)."""
        with self._lock:
            found = self.resolve(name)
            path = self.manifest_path(found)
            old = _digests_in(path.read_bytes())
            path.unlink()
            self._prune_dirs(path.parent)
            return self._remove_unreferenced(old)

    def assembling(self):
        """Hold off deletes (and their blob pruning) while a model is assembled from existing blobs.

        ``create`` reuses blobs of other models and installs its manifest last; a delete in between
        would prune a blob the new manifest is about to reference.
        """
        return self._lock

    def model_path(self, manifest: Manifest) -> Path:
        """The path llama.cpp should load for ``manifest``'s model layer(s).

        One layer: its blob. A split model (several model layers, in order): llama.cpp only finds the
        other parts beside the first under ``<prefix>-0000k-of-0000N.gguf`` names, so the parts are
        hard-linked (no copy) into ``splits/<first digest hex>/`` and the first link is returned.
        """
        parts = manifest.find_all(MODEL)
        if len(parts) < 2:
            return self.blob_path(parts[0].digest)
        directory = self.root / SPLITS_DIR / parts[0].digest[7:]
        names = [f"model-{i:05d}-of-{len(parts):05d}.gguf" for i in range(1, len(parts) + 1)]
        if not _all_files(directory, names):
            self._link_parts(directory, [self.blob_path(p.digest) for p in parts], names)
        return directory / names[0]

    def _link_parts(self, directory: Path, blobs: list[Path], names: list[str]) -> None:
        directory.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=TEMP_PREFIX, dir=directory.parent))
        try:
            for blob, file_name in zip(blobs, names):
                os.link(blob, staging / file_name)
            try:
                os.rename(staging, directory)  # atomic: a concurrent caller sees all links or none
            except OSError:  # a directory is in the way: another caller's (complete) or a damaged one
                if not _all_files(directory, names):
                    shutil.rmtree(directory, ignore_errors=True)
                    os.rename(staging, directory)
        finally:
            shutil.rmtree(staging, ignore_errors=True)  # gone already when it was renamed

    def runner_key(self, name: ModelName | str) -> str:
        """A key that is equal for copies of one model: the digest of its GGUF blob."""
        layer = self.read_manifest(name).find(MODEL)
        if layer is None:
            raise InvalidManifest(f"model '{_as_name(name).display()}' has no model layer")
        return layer.digest

    def load(self, name: ModelName | str) -> ModelRecord:
        """Everything the daemon needs to show or run a model (reads its GGUF metadata)."""
        return load_record(self, self.resolve(name))

    def _config_or_empty(self, manifest: Manifest) -> dict[str, Any]:
        try:
            return read_config(self, manifest)
        except (OSError, InvalidManifest) as e:
            log.warning("model config %s unreadable: %s", manifest.config.digest, e)
            return {}

    # ---- housekeeping ------------------------------------------------------------------------

    def remove_stale_temp_files(self, older_than: float = 3600.0) -> int:
        """Delete temp files left by interrupted writes (call at daemon start); returns how many."""
        removed = 0
        cutoff = time.time() - older_than
        for directory, _, files in os.walk(self.root):
            for file in files:
                path = Path(directory) / file
                if file.startswith(TEMP_PREFIX) and _mtime(path) < cutoff:
                    path.unlink(missing_ok=True)
                    removed += 1
        return removed

    def referenced_digests(self) -> set[str]:
        """Digests named by any manifest (read as text, so a damaged manifest still protects its blobs)."""
        refs: set[str] = set()
        for _, path in self._walk_manifests():
            try:
                refs |= _digests_in(path.read_bytes())
            except OSError:
                continue
        return refs

    # ---- internals ---------------------------------------------------------------------------

    def _install(self, name: ModelName, data: bytes, manifest: Manifest) -> list[str]:
        with self._lock:  # checked under the lock, so a concurrent delete cannot prune a blob meanwhile
            for layer in manifest.all_layers():
                if not self.has_blob(layer.digest):
                    raise MissingBlob(f'manifest for {name.display()} references missing blob "{layer.digest}"')
            old_paths = [self.manifest_path(n) for n, _ in self._walk_manifests() if n.key() == name.key()]
            old_digests: set[str] = set()
            for old in old_paths:
                old_digests |= _digests_in(old.read_bytes())
            target = self.manifest_path(name)
            with _disk_full_is_no_space(f"the manifest of {name.display()}"):
                target.parent.mkdir(parents=True, exist_ok=True)
                with self._temp_file(target.parent) as (tmp, f):
                    f.write(data)
                    _commit(f, tmp, target)
            for old in old_paths:
                # The same model under another spelling: one name, one manifest. On a case-insensitive
                # file system the old spelling *is* the new file, so compare files, not strings.
                if old.exists() and not os.path.samefile(old, target):
                    old.unlink(missing_ok=True)
                    self._prune_dirs(old.parent)
            return self._remove_unreferenced(old_digests - _digests_in(data))

    def _remove_unreferenced(self, candidates: set[str]) -> list[str]:
        if not candidates:
            return []
        still_used = self.referenced_digests()
        removed = []
        for digest in sorted(candidates - still_used):
            self.blob_path(digest).unlink(missing_ok=True)
            # a split model's links would otherwise keep its parts' disk space
            shutil.rmtree(self.root / SPLITS_DIR / digest[7:], ignore_errors=True)
            removed.append(digest)
        return removed

    def _prune_dirs(self, directory: Path) -> None:
        """Remove empty directories from ``directory`` up to (not including) manifests/."""
        while directory != self.manifests_dir and self.manifests_dir in directory.parents:
            try:
                directory.rmdir()
            except OSError:  # not empty, or gone
                return
            directory = directory.parent

    def _walk_manifests(self) -> Iterator[tuple[ModelName, Path]]:
        """(name, path) of every manifest file whose path is a valid name."""
        root = self.manifests_dir
        if not root.is_dir():
            return
        for path in sorted(root.glob("*/*/*/*")):
            if not path.is_file() or path.name.startswith(TEMP_PREFIX):
                continue
            host, namespace, model, tag = path.relative_to(root).parts
            try:
                yield ModelName(host, namespace, model, tag), path
            except InvalidName:
                log.warning("ignoring manifest with an invalid name: %s", path)

    def _temp_file(self, directory: Path) -> _TempFile:
        return _TempFile(directory)


class BlobWriter:
    """One blob written in pieces into a temp file, hashed as it goes, renamed under its digest on commit.

    Use it as a context manager (or call ``abort``): whatever was not committed is removed. Calls may
    come from any thread; a lock makes them one at a time, so an ``abort`` from a cancelled upload waits
    for a write still running rather than closing the file under it. A full disk raises NoSpace.
    """

    def __init__(self, store: Store, expected_digest: str | None):
        self._store = store
        self._expected = expected_digest
        self._what = f"blob {expected_digest}" if expected_digest else "a blob"
        self._lock = threading.Lock()
        self._hasher = hashlib.sha256()
        self.size = 0
        with _disk_full_is_no_space(self._what):
            self._temp = _TempFile(store.blobs_dir)

    def write(self, chunk: bytes) -> None:
        with self._lock, _disk_full_is_no_space(self._what):
            self._hasher.update(chunk)
            self._temp.file.write(chunk)
            self.size += len(chunk)

    def commit(self) -> tuple[str, int]:
        """Check the digest, make the blob durable and visible; returns (digest, size)."""
        with self._lock, _disk_full_is_no_space(self._what):
            digest = "sha256:" + self._hasher.hexdigest()
            if self._expected is not None and digest != self._expected:
                raise DigestMismatch(f'digest mismatch, expected "{self._expected}", got "{digest}"')
            _commit(self._temp.file, self._temp.path, self._store.blob_path(digest))
        return digest, self.size

    def abort(self) -> None:
        """Remove the temp file (a no-op after commit, and when called again)."""
        with self._lock:
            self._temp.close(quiet=True)

    def __enter__(self) -> BlobWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.abort()


class _TempFile:
    """A temp file in ``directory`` that is removed on close unless it was renamed into place."""

    def __init__(self, directory: Path):
        directory.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=directory, prefix=TEMP_PREFIX)
        self.path = Path(name)
        self.file = os.fdopen(fd, "wb")

    def __enter__(self) -> tuple[Path, IO[bytes]]:
        return self.path, self.file

    def __exit__(self, exc_type: object, *exc: object) -> None:
        self.close(quiet=exc_type is not None)

    def close(self, quiet: bool = False) -> None:
        """Close, then unlink whatever happens: on a full disk ``close`` flushes, fails again with
        ENOSPC, and must not skip the unlink (``quiet`` drops that second error when one is already
        on its way)."""
        try:
            self.file.close()
        except OSError:
            if not quiet:
                raise
        finally:
            self.path.unlink(missing_ok=True)  # already renamed on success: a no-op then


def _commit(f: IO[bytes], tmp: Path, target: Path) -> None:
    """fsync the temp file, rename it over ``target``, and fsync the directory so the rename sticks."""
    f.flush()
    os.fsync(f.fileno())
    os.chmod(tmp, 0o644)  # mkstemp makes 0600; blobs and manifests are readable like Ollama's
    os.replace(tmp, target)
    try:
        dir_fd = os.open(target.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


@contextmanager
def _disk_full_is_no_space(what: str) -> Iterator[None]:
    """A full disk or quota becomes NoSpace, in the words pulls use; other errors pass unchanged."""
    try:
        yield
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise NoSpace(f"no space left on device while writing {what}") from None
        raise


def _chunks(source: Iterable[bytes] | Readable) -> Iterator[bytes]:
    if isinstance(source, Readable):  # before Iterable: a binary file iterates by lines
        while chunk := source.read(CHUNK):
            yield chunk
        return
    yield from (bytes(c) for c in source if c)


def _digests_in(data: bytes) -> set[str]:
    return {m.decode() for m in _DIGEST_IN_TEXT.findall(data)}


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return float("inf")


def _as_name(name: ModelName | str) -> ModelName:
    return name if isinstance(name, ModelName) else ModelName.parse(name)



def _all_files(directory: Path, names: list[str]) -> bool:
    return all((directory / name).is_file() for name in names)
