"""Pulling GGUF models from Hugging Face: ``hf.co/<org>/<repo>[:<quant>]`` (or ``huggingface.co/…``).

    model_info(files_metadata=True)   the repo's files at its current commit, with sizes and LFS sha256
    → the GGUF the tag names          its quant in the file name, case-insensitively (``latest``: Q4_K_M,
                                      else the only GGUF); split files (-00001-of-0000N) are one model
    → its projector, if the repo has  an ``mmproj*.gguf`` (a vision model's), chosen as llama-server's
      one                             ``-hf`` does: the model's precision, else F16, else the first
    → hf_hub_download, file by file   pinned to that commit, into a work directory inside blobs/ (same disk)
    → sha256, reading each file once  checked against the LFS sha256, then renamed to blobs/sha256-<hex>
    → manifest                        the GGUF layer(s), the projector layer and a config blob; template and
                                      parameters stay inside the GGUF, as for every pulled GGUF

huggingface_hub does the HTTP (``HF_ENDPOINT``, ``HF_TOKEN``, Xet, CDN redirects). Its blocking calls run
in threads; its progress bars are replaced by a bridge to Ollama's pull events, and a cancelled pull stops
the transfer at its next chunk. Nothing is resumed: huggingface_hub deletes a cut-off download.

A split GGUF is stored as one model layer per part, in order. llama.cpp loads it from the first part's path
only when the other parts sit beside it under ``<prefix>-0000k-of-0000N.gguf`` names: ``Store.model_path``
makes such a directory of hard links (no copy) for whoever loads the model.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, TypeVar

from huggingface_hub import HfApi, constants, hf_hub_download
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    HFValidationError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils import httpx as hub_http  # its HTTP library (httpx2 in 2.x), for transport errors
from huggingface_hub.utils import tqdm as hub_tqdm

from llmhost.errors import AccessDenied, BadRequest, InvalidModelFile, PullError, QuantNotFound, RepoNotFound
from llmhost.registry import manifest as media
from llmhost.registry.create import check_loadable, manifest_for_gguf, write_config
from llmhost.registry.download import DOWNLOADS, ProgressCallback, _fsync_dir, check_space, emit
from llmhost.registry.gguf_meta import human_number, read_gguf_info
from llmhost.registry.manifest import Layer, Manifest
from llmhost.registry.names import ModelName
from llmhost.registry.net import describe, make_dir
from llmhost.registry.store import TEMP_PREFIX, Store

HF_HOSTS = ("hf.co", "huggingface.co")
DEFAULT_QUANT = "Q4_K_M"
PROGRESS_INTERVAL = 0.06  # seconds between progress events, as Ollama's ~60 ms
WORK_PREFIX = TEMP_PREFIX + "hf-"
STALE_WORK_DIR = 3600.0  # a work directory untouched this long belongs to a pull that died
# A quant as GGUF file names state it: Q4_K_M, IQ2_XXS, Q4_0_4_4, TQ1_0, MXFP4_MOE, BF16, F16, F32...
QUANT_NAME = re.compile(
    r"(?<![a-z0-9])(i?q\d+(?:_[a-z0-9]+)*|tq\d_\d|mxfp4(?:_moe)?|bf16|fp?16|fp?32)(?![a-z0-9])", re.IGNORECASE
)
_CANCEL_WAIT = 10.0  # seconds a cancelled pull waits for its download thread to notice
_SPLIT = re.compile(r"-(\d{5})-of-(\d{5})$")
_SHA256 = re.compile(r"[0-9a-f]{64}")
T = TypeVar("T")


# ---- choosing the file: shared with the wheel source ---------------------------------------------


def quant_of(filename: str) -> str:
    """The quantization a GGUF file name states, upper-cased: ``Llama-3.2-1B.Q4_K_M.gguf`` → ``Q4_K_M``.

    Without a recognisable quant, the last ``-``/``.``-separated word of the name stands for it.
    """
    stem = file_stem(filename)
    found = QUANT_NAME.findall(stem)
    return (found[-1] if found else re.split(r"[-.]", stem)[-1]).upper()


def file_stem(filename: str) -> str:
    """The file's base name without ``.gguf`` and without a split suffix (``-00001-of-00003``)."""
    stem = PurePosixPath(filename).name
    stem = stem[: -len(".gguf")] if stem.lower().endswith(".gguf") else stem
    return _SPLIT.sub("", stem)


def select_by_quant(items: Sequence[T], name_of: Callable[[T], str], wanted: str | None,
                    default: str | None = None) -> list[T]:
    """The items whose file names match a tag: its quant, or its whole stem, case-insensitively.

    With no tag (``wanted`` None): those of quant ``default``, else the only item, else none.
    """
    def matching(tag: str) -> list[T]:
        tag = tag.lower()
        return [item for item in items
                if quant_of(name_of(item)).lower() == tag or file_stem(name_of(item)).lower() == tag]

    if wanted is not None:
        return matching(wanted)
    found = matching(default) if default else []
    return found or (list(items) if len(items) == 1 else [])


@dataclass(frozen=True)
class RepoFile:
    """One file of a repository as ``model_info`` lists it."""

    path: str
    size: int | None
    sha256: str | None  # the LFS sha256; None for a file kept in git itself

    @property
    def digest(self) -> str | None:
        return f"sha256:{self.sha256}" if self.sha256 else None


@dataclass(frozen=True)
class GGUFModel:
    """A model in a repository: one GGUF file, or the parts of a split one in order."""

    parts: tuple[RepoFile, ...]
    count: int  # parts the file names announce (1 when not split)

    @property
    def name(self) -> str:
        return self.parts[0].path

    def check_complete(self, repo: str) -> None:
        numbers = [_split_number(part.path)[0] for part in self.parts]
        if numbers != list(range(1, self.count + 1)):
            raise PullError(f"{repo}: the split model {file_stem(self.name)} is incomplete: the repository holds "
                            f"parts {', '.join(map(str, numbers))} of {self.count}")


def gguf_models(files: Sequence[RepoFile]) -> list[GGUFModel]:
    """The GGUF models among a repository's files (projectors, ``mmproj-*.gguf``, left out)."""
    groups: dict[str, list[RepoFile]] = {}
    for file in files:
        name = PurePosixPath(file.path).name.lower()
        if name.endswith(".gguf") and not _is_projector_file(file.path) and _safe_path(file.path):
            key = str(PurePosixPath(file.path).parent / file_stem(file.path))
            groups.setdefault(key.lower(), []).append(file)
    models = []
    for parts in groups.values():
        parts.sort(key=lambda part: _split_number(part.path))
        models.append(GGUFModel(tuple(parts), max(_split_number(part.path)[1] for part in parts)))
    return sorted(models, key=lambda model: model.name)


def choose_model(models: Sequence[GGUFModel], tag: str, display: str) -> GGUFModel:
    """The model ``tag`` names (``latest``: Q4_K_M, else the only one); QuantNotFound lists the choices."""
    wanted = None if tag.lower() == "latest" else tag
    found = select_by_quant(models, lambda model: model.name, wanted, DEFAULT_QUANT)
    if len(found) == 1:
        return found[0]
    base = display.rsplit(":", 1)[0]
    if not models:
        raise QuantNotFound(f"{base} has no GGUF files to pull")
    if found:
        names = ", ".join(file_stem(model.name) for model in found)
        raise BadRequest(f'several GGUF files in {base} match "{tag}" ({names}); use the file name as the tag, '
                         f"e.g. {base}:{file_stem(found[0].name)}")
    quants = ", ".join(sorted({quant_of(model.name) for model in models}))
    if wanted is None:
        raise QuantNotFound(f"{base} has several GGUF files and none is {DEFAULT_QUANT}; pick one with a tag "
                            f"(available: {quants}), e.g. {base}:{quant_of(models[0].name)}")
    raise QuantNotFound(f'no GGUF file for "{tag}" in {base} (available: {quants})')


def choose_projector(files: Sequence[RepoFile], model: GGUFModel) -> RepoFile | None:
    """The projector llama-server's ``-hf`` would load with ``model``: an ``mmproj*.gguf`` in the
    model's folder (else anywhere in the repository) of the model's precision, else F16, else the
    first by name; None when the repository has none (a text-only model)."""
    candidates = sorted((f for f in files if _is_projector_file(f.path) and _safe_path(f.path)),
                        key=lambda f: f.path)
    folder = PurePosixPath(model.name).parent
    near = [f for f in candidates if PurePosixPath(f.path).parent == folder] or candidates
    for wanted in (_precision(model.name), "F16"):
        found = next((f for f in near if _precision(f.path) == wanted), None)
        if found is not None:
            return found
    return near[0] if near else None


def _is_projector_file(path: str) -> bool:
    name = PurePosixPath(path).name.lower()
    return name.endswith(".gguf") and "mmproj" in name


def _precision(filename: str) -> str:
    """A file name's quant with ``fp16``/``fp32`` spelt as ``F16``/``F32``."""
    quant = quant_of(filename)
    return quant[1:] if quant in ("FP16", "FP32") else quant


# ---- the pull ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Repo:
    """What a pull needs to know about the repository, read once."""

    id: str
    revision: str  # the commit every file is downloaded from
    files: tuple[RepoFile, ...]
    parameters: int | None  # the Hub's count from the GGUF (``gguf.total``), when it gives one


async def pull_hf(store: Store, name: ModelName | str, progress: ProgressCallback | None = None) -> ModelName:
    """Pull ``hf.co/<org>/<repo>[:<quant>]`` into ``store``, reporting Ollama's pull events.

    Raises RepoNotFound or QuantNotFound (404, the latter listing the quants there are), AccessDenied (403)
    for gated and private repositories, BadRequest for names that are not Hugging Face names, PullError for
    network, disk and file failures. The store is unchanged in those cases.
    """
    name = name if isinstance(name, ModelName) else ModelName.parse(name)
    if name.host.lower() not in HF_HOSTS:
        raise BadRequest(f'"{name}" is not a Hugging Face model name; use hf.co/<org>/<repo>[:<quant>]')
    await emit(progress, {"status": "pulling manifest"})
    repo = await asyncio.to_thread(_read_repo, f"{name.namespace}/{name.model}")
    model = choose_model(gguf_models(repo.files), name.tag, name.display())
    model.check_complete(repo.id)
    projector = choose_projector(repo.files, model)
    files = (*model.parts, *([projector] if projector else []))
    source = {"type": "huggingface", "repo": repo.id, "revision": repo.revision,
              "files": [part.path for part in model.parts], **({"projector": projector.path} if projector else {})}
    installed: list[str] = []
    try:
        with DOWNLOADS.claim(part.digest for part in files if part.digest):
            layers = await _fetch_files(store, repo, files, progress, installed)
            manifest = await asyncio.to_thread(_manifest, store, layers, source, repo, projector)
            await emit(progress, {"status": "writing manifest"})
            removed = await asyncio.to_thread(store.write_manifest, name, manifest)
    except Exception as e:  # not on cancel: what arrived is kept, as other sources do
        await asyncio.to_thread(DOWNLOADS.release_unused, store, installed)
        if isinstance(e, InvalidModelFile):
            raise PullError(f"{repo.id}/{model.name} is not a usable GGUF model: {e}") from None
        raise
    if removed:
        await emit(progress, {"status": "removing unused layers"})
    await emit(progress, {"status": "success"})
    return name


def _read_repo(repo_id: str) -> _Repo:
    with _hub_errors(repo_id):
        info = HfApi().model_info(repo_id, files_metadata=True)
    files = tuple(
        RepoFile(s.rfilename, s.size, s.lfs.sha256.lower() if s.lfs and _SHA256.fullmatch(s.lfs.sha256 or "") else None)
        for s in info.siblings or []
    )
    total = info.gguf.get("total") if isinstance(info.gguf, dict) else None
    return _Repo(repo_id, info.sha or "main", files, total if isinstance(total, int) and total > 0 else None)


async def _fetch_files(store: Store, repo: _Repo, parts: Sequence[RepoFile], progress: ProgressCallback | None,
                       installed: list[str]) -> list[tuple[str, int]]:
    """Download the files not in the store yet, verify them and move them into place: (digest, size) each.

    Digests moved into the store are appended to ``installed`` as they arrive.
    """
    layers = {part: (part.digest, store.blob_size(part.digest))
              for part in parts if part.digest and store.has_blob(part.digest)}
    missing = [part for part in parts if part not in layers]
    check_space(store, sum(part.size or 0 for part in missing), f"{repo.id}/{parts[0].path}")
    for part in parts:  # one bar per file, in order, before bytes flow (as Ollama)
        size = layers[part][1] if part in layers else part.size or 0
        await emit(progress, {**_event(part), "total": size, "completed": size if part in layers else 0})
    await asyncio.to_thread(_remove_stale_work_dirs, store)
    work = Path(tempfile.mkdtemp(prefix=WORK_PREFIX, dir=make_dir(store.blobs_dir)))
    try:
        downloaded = {part: await _download(repo, part, work, progress) for part in missing}
        await emit(progress, {"status": "verifying sha256 digest"})
        for part, path in downloaded.items():
            layers[part] = await asyncio.to_thread(_install, store, path, part)
            installed.append(layers[part][0])
        return [layers[part] for part in parts]
    finally:
        shutil.rmtree(work, ignore_errors=True)


async def _download(repo: _Repo, part: RepoFile, work: Path, progress: ProgressCallback | None) -> Path:
    transfer = ThreadProgress()
    reported = -1

    async def report() -> None:
        nonlocal reported
        completed = transfer.completed if part.size is None else min(transfer.completed, part.size)
        if completed != reported:
            reported = completed
            await emit(progress, {**_event(part), "total": part.size or completed, "completed": completed})

    def download() -> Path:
        with _hub_errors(repo.id, part.path):
            return Path(hf_hub_download(repo.id, part.path, revision=repo.revision, local_dir=work / "files",
                                        cache_dir=work / "cache", tqdm_class=progress_bridge(transfer)))

    path = await run_in_thread(download, transfer, report)
    await report()
    return path


def _event(part: RepoFile) -> dict[str, Any]:
    if part.digest:
        return {"status": f"pulling {part.digest[7:19]}", "digest": part.digest}
    return {"status": f"pulling {file_stem(part.path)[:40]}"}  # a file kept in git: its sha256 is unknown yet


def _install(store: Store, path: Path, part: RepoFile) -> tuple[str, int]:
    """Hash the downloaded file (one read), check it, and rename it to its blob: no second copy."""
    hasher, size = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while chunk := f.read(8 << 20):
            hasher.update(chunk)
            size += len(chunk)
        os.fsync(f.fileno())
    digest = "sha256:" + hasher.hexdigest()
    if part.digest and digest != part.digest:
        raise PullError(f'digest mismatch for {part.path}, expected "{part.digest}", got "{digest}"')
    if part.size is not None and size != part.size:
        raise PullError(f"{part.path}: downloaded {size} bytes, the repository lists {part.size}")
    target = store.blob_path(digest)
    os.chmod(path, 0o644)
    os.replace(path, target)
    _fsync_dir(target.parent)
    return digest, size


def _manifest(store: Store, layers: list[tuple[str, int]], source: dict, repo: _Repo,
              projector: RepoFile | None) -> Manifest:
    """The model's manifest; ``layers`` end with the projector's when there is one."""
    if projector is None:
        return _model_manifest(store, layers, source, repo.parameters)
    manifest = _model_manifest(store, layers[:-1], source, repo.parameters)
    return _with_projector(store, manifest, layers[-1], f"{repo.id}/{projector.path}")


def _model_manifest(store: Store, layers: list[tuple[str, int]], source: dict, parameters: int | None) -> Manifest:
    if len(layers) == 1:
        return manifest_for_gguf(store, layers[0][0], extra_config={"source": source})
    info = read_gguf_info(store.blob_path(layers[0][0]))  # the first part holds the metadata and template
    check_loadable(info)
    count = info.metadata.get("split.count")
    if count != len(layers):
        raise InvalidModelFile(f"the first part says split.count={count!r}, the repository has {len(layers)} parts")
    for digest, _ in layers[1:]:
        with open(store.blob_path(digest), "rb") as f:
            if f.read(4) != b"GGUF":
                raise InvalidModelFile("a part of the split model is not a GGUF file")
    extra: dict[str, Any] = {"source": source}
    if parameters:  # the first part's tensors are only a share of the model's
        extra["model_type"] = human_number(parameters)
    model_layers = tuple(Layer(media.MODEL, digest, size) for digest, size in layers)
    return Manifest(write_config(store, info, extra), model_layers)


def _with_projector(store: Store, manifest: Manifest, layer: tuple[str, int], where: str) -> Manifest:
    """``manifest`` with the projector's layer after the model's; a file that is no projector is refused."""
    digest, size = layer
    try:
        is_projector = read_gguf_info(store.blob_path(digest)).is_projector
    except InvalidModelFile as e:
        raise PullError(f"{where} is not a usable projector GGUF: {e}") from None
    if not is_projector:
        raise PullError(f"{where} is named as a projector (mmproj) but its metadata is a model's; "
                        "llama.cpp cannot load it as one")
    return Manifest(manifest.config, (*manifest.layers, Layer(media.PROJECTOR, digest, size)))


# ---- huggingface_hub in threads ----------------------------------------------------------------


class _Stopped(Exception):
    """Raised inside a worker thread's copy loop (huggingface_hub's download, a wheel's extraction)."""


class ThreadProgress:
    """Bytes counted by a worker thread, read by the event loop, which can stop the worker through it."""

    def __init__(self) -> None:
        self.completed = 0
        self.cancelled = threading.Event()

    def add(self, n: int) -> None:
        if self.cancelled.is_set():
            raise _Stopped("the pull was cancelled")  # unwinds the worker, which deletes its partial file
        self.completed += n


class _ProgressBridge(hub_tqdm):
    """Takes the place of huggingface_hub's progress bars (its public ``tqdm_class`` argument): draws
    nothing, counts bytes into ``transfer``.

    huggingface_hub gives a bar that has ``update_transfer`` the network bytes of a download too (an
    Xet one's, which differ from the bytes written) instead of making a second bar for them; so the
    bridge has it, and ignores them: ``update`` counts what the pull's progress shows.
    """

    transfer: ThreadProgress

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **{**kwargs, "disable": True})

    def update(self, n: float | None = 1) -> None:
        self.transfer.add(int(n or 0))
        DOWNLOADS.count(int(n or 0))

    def update_transfer(self, n: int) -> None:
        """Network bytes: not counted (see the class)."""

    def set_transfer_postfix_str(self, *args: Any, **kwargs: Any) -> None:
        pass


def progress_bridge(transfer: ThreadProgress) -> type[hub_tqdm]:
    """A ``tqdm_class`` for huggingface_hub that counts into ``transfer`` (it instantiates the class itself)."""
    return type("ProgressBridge", (_ProgressBridge,), {"transfer": transfer})


async def run_in_thread(call: Callable[[], T], transfer: ThreadProgress, report: Callable[[], Awaitable[None]]) -> T:
    """Run ``call`` in a thread, awaiting ``report()`` every PROGRESS_INTERVAL while it runs.

    Cancelling stops the thread at its next ``transfer.add`` (it is waited for, a bounded time).
    """
    task = asyncio.ensure_future(asyncio.to_thread(call))
    task.add_done_callback(lambda t: t.cancelled() or t.exception())  # retrieved even when nobody waits
    try:
        while not task.done():
            await asyncio.wait([task], timeout=PROGRESS_INTERVAL)
            await report()
        return task.result()
    except asyncio.CancelledError:
        transfer.cancelled.set()
        await asyncio.wait([task], timeout=_CANCEL_WAIT)  # it stops at its next chunk and deletes its file
        raise


@contextlib.contextmanager
def _hub_errors(repo_id: str, file: str | None = None) -> Iterator[None]:
    """huggingface_hub's exceptions as llmhost errors a user can act on."""
    what = f"{repo_id}/{file}" if file else repo_id
    try:
        yield
    except GatedRepoError:
        raise AccessDenied(f"{repo_id} is a gated model on Hugging Face: accept its conditions on its page, then set "
                           "HF_TOKEN to a token of that account (https://huggingface.co/settings/tokens)") from None
    except RepositoryNotFoundError:
        raise RepoNotFound(f'Hugging Face repository "{repo_id}" not found; if it is private or gated, set HF_TOKEN '
                           "to a token that can read it") from None
    except HFValidationError as e:
        raise BadRequest(f'"{repo_id}" is not a valid Hugging Face repository name: {describe(e)}') from None
    except RevisionNotFoundError:
        raise RepoNotFound(f'Hugging Face repository "{repo_id}" has no main branch') from None
    except RemoteEntryNotFoundError:
        raise PullError(f"{what} is no longer in the repository; pull again") from None
    except HfHubHTTPError as e:
        status = e.response.status_code if e.response is not None else None
        if status in (401, 403):
            raise AccessDenied(f"Hugging Face refused access to {what} (HTTP {status}); set HF_TOKEN to a token "
                               "that can read it") from None
        raise PullError(f"Hugging Face answered HTTP {status} for {what}") from None
    except OfflineModeIsEnabled:
        raise PullError(f"cannot pull {what}: HF_HUB_OFFLINE is set") from None
    except (LocalEntryNotFoundError, hub_http.TransportError) as e:
        cause = e.__cause__ or e
        raise PullError(f"cannot reach Hugging Face at {constants.ENDPOINT} for {what}: {describe(cause)}") from None
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise PullError(f"no space left on device while downloading {what}") from None
        raise PullError(f"downloading {what} failed: {describe(e)}") from None


# ---- helpers -----------------------------------------------------------------------------------


def _split_number(path: str) -> tuple[int, int]:
    """(part, count) from a ``-0000k-of-0000N.gguf`` name; (1, 1) for a file that is not split."""
    stem = PurePosixPath(path).name
    match = _SPLIT.search(stem[: -len(".gguf")] if stem.lower().endswith(".gguf") else stem)
    return (int(match.group(1)), int(match.group(2))) if match else (1, 1)


def _safe_path(path: str) -> bool:
    """A relative path inside the repository (a hostile endpoint could list ``../x``)."""
    parts = PurePosixPath(path).parts
    return bool(parts) and not path.startswith("/") and "\\" not in path and ".." not in parts


def _remove_stale_work_dirs(store: Store) -> None:
    """Delete work directories of pulls that died with the daemon (nothing written to them for an hour)."""
    cutoff = time.time() - STALE_WORK_DIR
    for directory in store.blobs_dir.glob(WORK_PREFIX + "*"):
        if directory.is_dir() and _newest_mtime(directory) < cutoff:
            shutil.rmtree(directory, ignore_errors=True)


def _newest_mtime(directory: Path) -> float:
    newest = 0.0
    for root, _, files in os.walk(directory):
        for name in [".", *files]:
            with contextlib.suppress(OSError):  # a live pull may be removing it meanwhile
                newest = max(newest, os.stat(os.path.join(root, name)).st_mtime)
    return newest

