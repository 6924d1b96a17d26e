"""Resumable, verified blob downloads shared by the pull sources.

    HEAD for the size (a redirect is resolved once; the parts go to the final URL)
      → parts of max(size/32, 16 MiB), up to 8 ranged GETs at once, lowest offsets first
      → written into blobs/sha256-<hex>-partial (sparse), part state in blobs/sha256-<hex>-partial.json
      → sha256 of the contiguous prefix as it grows (a thread, which also fdatasyncs as it goes)
      → fsync, rename to blobs/sha256-<hex>

A cancelled or failed download keeps its partial file and state, so the next pull of the blob (also
after a daemon restart) fetches only the missing bytes. A digest mismatch or a full disk deletes both.
Concurrent pulls of one blob in one process share one download (``Downloads``); every waiter gets its
progress events. No response is read past the expected size (CVE-2024-12886: hostile registries).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import inspect
import json
import logging
import os
import shutil
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from yarl import URL

from llmhost.errors import DownloadDiscarded, PullError
from llmhost.registry.manifest import check_digest, size_mismatch
from llmhost.registry.net import describe, redact
from llmhost.registry.store import Store
from llmhost.units import format_size

log = logging.getLogger(__name__)

ProgressCallback = Callable[[dict[str, Any]], Awaitable[None] | None]
WRITE_CHUNK = 1 << 20  # bytes gathered from the socket before one pwrite
HASH_CHUNK = 8 << 20
SYNC_EVERY = 64 << 20  # hashed bytes between fdatasyncs: the final fsync then has little left
READ_BUFFER = 4 << 20  # per connection; aiohttp's 256 KiB default halves loopback throughput
_FLUSH_AFTER = 0.2  # seconds: a slow stream is still written (and counted) regularly
_RETRY_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
_STATE_VERSION = 1


@dataclass(frozen=True)
class DownloadOptions:
    """Tunables of the downloader; tests shrink them (small parts, short stall timeouts)."""

    min_part_size: int = 16 << 20
    # More parts than connections: parts finish in order, so the hash follows the download instead of
    # reading 7/8 of the blob after the last byte arrives (measured: P5 0.44 → ~0.9 of curl).
    max_parts: int = 32  # a blob is split into at most this many parts...
    concurrency: int = 8  # ...of which this many download at once
    stall_timeout: float = 30.0  # a part that receives no byte for this long is retried
    retries: int = 5  # tries in a row without progress before a part gives up
    backoff: float = 0.5  # seconds before the first retry, doubled each time
    progress_interval: float = 0.08  # Ollama reports about every 60 ms
    checkpoint_interval: float = 1.0  # how often part state is saved while downloading


@dataclass(frozen=True)
class BlobRequest:
    """One blob to download.

    ``digest`` None means it is not known in advance (a plain URL): it is computed while downloading
    and the partial file is named after the URL instead.
    """

    url: str
    digest: str | None = None
    size: int | None = None  # the size a manifest promises; the server must report the same
    headers: Mapping[str, str] = field(default_factory=dict)  # sent only to the URL's own origin
    verify_tls: bool = True
    label: str | None = None  # "pulling <label>" when there is no digest

    def key(self) -> str:
        """The partial file's stem: the digest's, or one derived from the URL."""
        if self.digest is not None:
            return "sha256-" + check_digest(self.digest)[7:]
        return "url-" + hashlib.sha256(self.url.encode()).hexdigest()

    def status(self) -> str:
        return f"pulling {self.digest[7:19]}" if self.digest else f"pulling {self.label or 'file'}"


async def emit(progress: ProgressCallback | None, event: dict[str, Any]) -> None:
    """Call a progress callback that may be sync or async."""
    if progress is None:
        return
    result = progress(event)
    if inspect.isawaitable(result):
        await result


async def gather_cancelling(aws: Iterable[Awaitable[Any]]) -> list[Any]:
    """Like ``asyncio.gather``, but the first failure cancels the rest (and waits for them)."""
    tasks = [asyncio.ensure_future(aw) for aw in aws]
    if not tasks:
        return []
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.wait(tasks)
    for task in tasks:  # the first failure, in order
        if not task.cancelled() and task.exception() is not None:
            raise task.exception()  # type: ignore[misc]
    return [task.result() for task in tasks]


def space_needed(store: Store, blobs: Iterable[tuple[str, int]]) -> int:
    """Bytes of disk the missing blobs among (digest, size) still need (resumed partials counted)."""
    needed = 0
    for digest, size in blobs:
        if store.has_blob(digest):
            continue
        partial = store.blobs_dir / f"sha256-{digest[7:]}-partial"
        try:
            allocated = partial.stat().st_blocks * 512
        except OSError:
            allocated = 0
        needed += max(0, size - allocated)
    return needed


def check_space(store: Store, needed: int, what: str) -> None:
    """Refuse (before anything is written) when the store's disk cannot hold ``needed`` more bytes."""
    store.blobs_dir.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(store.blobs_dir).free
    if needed > free:
        raise PullError(
            f"no space left on device for {what}: needs {format_size(needed)}, "
            f"{format_size(free)} free in {store.blobs_dir}"
        )


class Downloads:
    """The blob downloads in flight in this process: a second pull of a blob waits on the first.

    ``claim`` marks blobs a pull is about to reference, so a failing pull's clean-up never deletes a
    blob another pull still needs.
    """

    def __init__(self, options: DownloadOptions | None = None):
        self.options = options or DownloadOptions()
        self._active: dict[tuple[Path, str], _Download] = {}
        self._claims: Counter[str] = Counter()
        self.received = 0  # bytes received from sources since start (the daemon's pull-bytes metric)
        self._received_lock = threading.Lock()

    def count(self, n: int) -> None:
        """Add ``n`` bytes received to ``received`` (from any thread: some sources download in threads)."""
        with self._received_lock:
            self.received += n

    async def fetch(
        self, store: Store, request: BlobRequest, progress: ProgressCallback | None = None
    ) -> tuple[str, int]:
        """Download ``request`` into ``store`` (or wait for the download already running); returns
        (digest, size). Cancelling the last waiter cancels the download, keeping its partial."""
        if request.digest is not None and store.has_blob(request.digest):
            size = store.blob_size(request.digest)
            if request.size is not None and size != request.size:  # the blob is verified: the manifest is wrong
                raise size_mismatch(request.digest, request.size, size)
            await emit(progress, {"status": request.status(), "digest": request.digest,
                                  "total": size, "completed": size})
            return request.digest, size
        key = (store.blobs_dir.resolve(), request.key())
        download = self._active.get(key)
        if download is None or download.task.done():
            download = _Download(store, request, self.options, self.count)
            self._active[key] = download
            download.task = asyncio.ensure_future(download.run())
            download.task.add_done_callback(lambda _: self._forget(key, download))
        return await download.wait(progress)

    @contextlib.contextmanager
    def claim(self, digests: Iterable[str]) -> Iterator[None]:
        """While inside, ``release_unused`` leaves these digests alone."""
        claimed = list(set(digests))
        self._claims.update(claimed)
        try:
            yield
        finally:
            for digest in claimed:
                self._claims[digest] -= 1
                if self._claims[digest] <= 0:
                    del self._claims[digest]

    def release_unused(self, store: Store, digests: Iterable[str], partials: bool = False) -> list[str]:
        """Delete blobs among ``digests`` that no manifest references and no running pull claims;
        with ``partials``, their partial downloads too (unless one is still running)."""
        candidates = {d for d in digests if self._claims[d] == 0}
        if not candidates:
            return []
        if partials:
            for digest in candidates:
                if not self._running(store, digest):
                    _Download.remove_partial(store.blobs_dir / BlobRequest("", digest).key())
        removed = sorted(candidates - store.referenced_digests())
        for digest in removed:
            store.blob_path(digest).unlink(missing_ok=True)
        return removed

    def _running(self, store: Store, digest: str) -> bool:
        download = self._active.get((store.blobs_dir.resolve(), BlobRequest("", digest).key()))
        return download is not None and not download.task.done()

    def _forget(self, key: tuple[Path, str], download: _Download) -> None:
        if self._active.get(key) is download:
            del self._active[key]


# One per process, not per DaemonState: it guards files on disk (a blob's ``-partial`` file, keyed by
# the store's directory), so every pull in the process, whichever app or caller started it, must go
# through the same one, or two could write one partial file at once. Tests that want their own
# books pass a ``Downloads`` to the sources that take one (and to ``Metrics``).
DOWNLOADS = Downloads()


@dataclass
class _Part:
    offset: int
    size: int
    completed: int = 0

    @property
    def end(self) -> int:
        return self.offset + self.size

    @property
    def remaining(self) -> int:
        return self.size - self.completed


class _Retry(Exception):
    """A transient failure of one part: retried with backoff."""


class _Download:
    """One blob being downloaded, shared by every pull that needs it."""

    def __init__(self, store: Store, request: BlobRequest, options: DownloadOptions,
                 on_bytes: Callable[[int], None] = lambda n: None):
        self.store, self.request, self.options = store, request, options
        self.on_bytes = on_bytes  # bytes received, as they are written
        stem = store.blobs_dir / request.key()
        self.partial = stem.with_name(stem.name + "-partial")
        self.state_path = stem.with_name(stem.name + "-partial.json")
        self.task: asyncio.Future[tuple[str, int]]
        self.listeners: list[ProgressCallback] = []
        self.waiters = 0
        self.url = request.url
        self.total = request.size or 0
        self.parts: list[_Part] = []
        self.etag: str | None = None
        self.reported = -1
        self._fd = -1
        self._hasher = hashlib.sha256()
        self._hashed = 0
        self._synced = 0
        self._wake = asyncio.Event()
        self._writing_done = False
        self._io = ThreadPoolExecutor(1, "llmhost-write")
        self._hashing = ThreadPoolExecutor(1, "llmhost-hash")

    # ---- waiting -----------------------------------------------------------------------------

    async def wait(self, progress: ProgressCallback | None) -> tuple[str, int]:
        self.waiters += 1
        if progress is not None:
            self.listeners.append(progress)
            if self.reported >= 0:  # a late joiner sees where the download is
                await emit(progress, self._event(self.reported))
        try:
            return await asyncio.shield(self.task)
        except asyncio.CancelledError:
            if self.waiters == 1 and not self.task.done():  # the last one out stops it
                self.task.cancel()
                await asyncio.wait([self.task])
            raise
        finally:
            self.waiters -= 1
            if progress is not None:
                self.listeners.remove(progress)

    # ---- the download ------------------------------------------------------------------------

    async def run(self) -> tuple[str, int]:
        connector = aiohttp.TCPConnector(limit=self.options.concurrency + 2, ssl=self.request.verify_tls)
        async with aiohttp.ClientSession(connector=connector, auto_decompress=False,
                                         read_bufsize=READ_BUFFER) as session:
            self.session = session
            self.total, self.etag, ranged = await self._probe()
            if self.total == 0:
                return self._install_empty()
            ranged = ranged or await self._supports_ranges()
            try:
                self._prepare(ranged)
                await self._download_parts()
                digest = await self._verify()
                await self._close()
                await asyncio.to_thread(self._install, digest)
                return digest, self.total
            except DownloadDiscarded:
                await self._close()
                self._discard()
                raise
            except BaseException:  # cancelled or failed for good: keep what we have for the next pull
                await self._close()
                self._save_state()
                raise

    async def _probe(self) -> tuple[int, str | None, bool]:
        """Size, ETag and whether ranges are advertised, from a HEAD that follows redirects (the parts
        then go to the final URL)."""
        expected = self.request.size
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.options.stall_timeout,
                                        sock_read=self.options.stall_timeout)
        try:
            async with self.session.head(self.url, headers=self._headers(self.url), allow_redirects=True,
                                         max_redirects=3, timeout=timeout) as resp:
                if resp.status in (405, 501) and expected is not None:  # HEAD not supported: trust the manifest
                    return expected, None, False
                if resp.status != 200:
                    raise PullError(f"{self._what()}: HTTP {resp.status} from {_origin(self.url)}")
                self.url = str(resp.url)
                length = resp.headers.get("Content-Length")
                etag = resp.headers.get("ETag")
                ranged = resp.headers.get("Accept-Ranges", "").strip().lower() == "bytes"
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as e:
            raise PullError(f"{self._what()}: cannot reach {_origin(self.url)}: {describe(e)}") from None
        size = int(length) if length and length.isdigit() else None
        if size is None and expected is None:
            raise PullError(f"{self._what()}: {_origin(self.url)} did not report the file's size")
        if size is not None and expected is not None and size != expected:
            raise DownloadDiscarded(f"{self._what()}: the server has {size} bytes, the manifest says {expected}")
        return (size if size is not None else expected), etag, ranged  # type: ignore[return-value]

    async def _supports_ranges(self) -> bool:
        """Ask for one byte: a 206 means parts can be fetched in parallel (and resumed)."""
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.options.stall_timeout,
                                        sock_read=self.options.stall_timeout)
        try:
            async with self.session.get(self.url, headers={**self._headers(self.url), "Range": "bytes=0-0"},
                                        timeout=timeout) as resp:
                ranged = resp.status == 206
                resp.close()  # never read a body the server may send whole
                return ranged
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
            return False

    def _prepare(self, ranged: bool) -> None:
        """Resume from saved part state if it matches this blob, else start a fresh sparse file.

        Without Range support the blob is one part: parallel parts would each start from byte 0.
        """
        self.parts = self._load_state() or []
        if not self.parts:
            self.partial.unlink(missing_ok=True)
            self.parts = _plan(self.total, self.options) if ranged else [_Part(0, self.total)]
        needed = sum(p.remaining for p in self.parts)
        check_space(self.store, needed, self.request.digest or self.request.label or self.url)
        fresh = not self.partial.exists()
        self._fd = os.open(self.partial, os.O_RDWR | os.O_CREAT, 0o644)
        if fresh:
            os.ftruncate(self._fd, self.total)
        self._save_state()

    async def _download_parts(self) -> None:
        ticker = asyncio.ensure_future(self._tick())
        hasher = asyncio.ensure_future(self._hash_loop())
        gate = asyncio.Semaphore(self.options.concurrency)
        try:
            await gather_cancelling(self._fetch_part(p, gate) for p in self.parts if p.remaining)
        finally:
            ticker.cancel()
            self._writing_done = True
            self._wake.set()
            await asyncio.wait([ticker, hasher])
        await self._report()

    async def _fetch_part(self, part: _Part, gate: asyncio.Semaphore) -> None:
        async with gate:
            tries = 0
            while part.remaining:
                before = part.completed
                try:
                    await self._stream_part(part)
                except (_Retry, aiohttp.ClientError, asyncio.TimeoutError, ConnectionError) as e:
                    tries = 1 if part.completed > before else tries + 1
                    if tries > self.options.retries:
                        raise PullError(f"{self._what()} failed after {tries} tries: {describe(e)}") from None
                    delay = self.options.backoff * 2 ** (tries - 1)
                    log.info("%s: part at %d: %s; retrying in %.1fs", self._what(), part.offset, describe(e), delay)
                    await asyncio.sleep(delay)

    async def _stream_part(self, part: _Part) -> None:
        start = part.offset + part.completed
        headers = {**self._headers(self.url), "Range": f"bytes={start}-{part.end - 1}",
                   "Accept-Encoding": "identity"}
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.options.stall_timeout,
                                        sock_read=self.options.stall_timeout)
        async with self.session.get(self.url, headers=headers, timeout=timeout) as resp:
            skip = self._check_part_response(resp, start)
            # One buffer per part, reused: fresh megabyte-sized allocations cost page faults each time.
            buf = memoryview(bytearray(WRITE_CHUNK))
            filled, last_flush = 0, time.monotonic()
            while part.remaining > filled:
                chunk = memoryview(await resp.content.read(WRITE_CHUNK))
                if not chunk:
                    break
                if skip:  # a server that ignores Range: drop what we already have
                    dropped = min(skip, len(chunk))
                    chunk, skip = chunk[dropped:], skip - dropped
                chunk = chunk[: part.remaining - filled]  # never past the part's end
                while chunk:
                    n = min(len(chunk), WRITE_CHUNK - filled)
                    buf[filled:filled + n], chunk, filled = chunk[:n], chunk[n:], filled + n
                    if filled == WRITE_CHUNK or (not chunk and time.monotonic() - last_flush > _FLUSH_AFTER):
                        await self._write(part, buf[:filled])
                        filled, last_flush = 0, time.monotonic()
            if filled:
                await self._write(part, buf[:filled])
        if part.remaining:
            raise _Retry(f"the connection closed {part.remaining} bytes before the end of the part")

    def _check_part_response(self, resp: aiohttp.ClientResponse, start: int) -> int:
        """Bytes to skip at the start of the body (a 200 answer to a Range request), or raise."""
        if resp.status == 206:
            content_range = resp.headers.get("Content-Range", "")
            if not content_range.startswith(f"bytes {start}-"):
                raise PullError(f"{self._what()}: the server answered range {start}- with {content_range!r}")
            return 0
        if resp.status == 200:
            return start
        if resp.status in _RETRY_STATUS:
            raise _Retry(f"HTTP {resp.status}")
        raise PullError(f"{self._what()}: HTTP {resp.status} from {_origin(str(resp.url))}")

    async def _write(self, part: _Part, data: memoryview) -> None:
        offset = part.offset + part.completed
        try:
            await asyncio.get_running_loop().run_in_executor(self._io, _pwrite_all, self._fd, data, offset)
        except OSError as e:
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                raise DownloadDiscarded(f"no space left on device while writing {self.partial}") from None
            raise PullError(f"{self._what()}: cannot write {self.partial}: {e.strerror or e}") from None
        part.completed += len(data)
        self.on_bytes(len(data))
        self._wake.set()

    # ---- verification ------------------------------------------------------------------------

    def _frontier(self) -> int:
        """End of the contiguous prefix written so far (what can be hashed)."""
        for part in self.parts:
            if part.remaining:
                return part.offset + part.completed
        return self.total

    async def _hash_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self._writing_done:
                return
            frontier = self._frontier()
            if frontier > self._hashed:
                await loop.run_in_executor(self._hashing, self._hash_upto, frontier)

    def _hash_upto(self, end: int) -> None:
        while self._hashed < end and self._fd >= 0:
            data = os.pread(self._fd, min(HASH_CHUNK, end - self._hashed), self._hashed)
            if not data:
                raise PullError(f"{self.partial} is shorter than expected")
            self._hasher.update(data)
            self._hashed += len(data)
            if self._hashed - self._synced >= SYNC_EVERY:
                os.fdatasync(self._fd)
                self._synced = self._hashed

    async def _verify(self) -> str:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._hashing, self._hash_upto, self.total)
        digest = "sha256:" + self._hasher.hexdigest()
        want = self.request.digest
        if want is not None and digest != want:
            raise DownloadDiscarded(f"digest mismatch, file must be downloaded again: want {want}, got {digest}")
        await loop.run_in_executor(self._io, os.fsync, self._fd)
        return digest

    # ---- files -------------------------------------------------------------------------------

    async def _close(self) -> None:
        """Wait for write and hash threads still using the file, then close it."""
        await asyncio.to_thread(self._io.shutdown)
        await asyncio.to_thread(self._hashing.shutdown)
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def _install(self, digest: str) -> None:
        target = self.store.blob_path(digest)
        os.chmod(self.partial, 0o644)
        os.replace(self.partial, target)
        _fsync_dir(target.parent)
        self.state_path.unlink(missing_ok=True)

    def _install_empty(self) -> tuple[str, int]:
        digest, size = self.store.write_blob([], self.request.digest)
        return digest, size

    def _discard(self) -> None:
        self.remove_partial(self.partial.with_name(self.partial.name.removesuffix("-partial")))

    @staticmethod
    def remove_partial(stem: Path) -> None:
        """Delete ``<stem>-partial`` and its state file."""
        for suffix in ("-partial", "-partial.json", "-partial.json.tmp"):
            stem.with_name(stem.name + suffix).unlink(missing_ok=True)

    def _load_state(self) -> list[_Part] | None:
        try:
            doc = json.loads(self.state_path.read_text())
            parts = [_Part(int(p["offset"]), int(p["size"]), int(p["completed"])) for p in doc["parts"]]
            same = (doc["version"] == _STATE_VERSION and doc["size"] == self.total
                    and doc.get("digest") == self.request.digest
                    # without a digest the ETag is what says the file did not change meanwhile
                    and (self.request.digest is not None or doc.get("etag") == self.etag))
        except (OSError, ValueError, KeyError, TypeError, RecursionError):
            return None
        try:
            on_disk = self.partial.stat().st_size
        except OSError:
            return None
        if not same or on_disk != self.total or not _tiles(parts, self.total):
            return None
        return parts

    def _save_state(self) -> None:
        if not self.parts or not self.partial.exists():
            return
        doc = {"version": _STATE_VERSION, "digest": self.request.digest, "size": self.total, "etag": self.etag,
               "parts": [{"offset": p.offset, "size": p.size, "completed": p.completed} for p in self.parts]}
        if self.request.digest is None:
            doc["url"] = redact(self.request.url)
        tmp = self.state_path.with_name(self.state_path.name + ".tmp")
        try:
            tmp.write_text(json.dumps(doc))
            os.replace(tmp, self.state_path)
        except OSError as e:  # a full disk: the next pull starts this blob over
            log.warning("cannot save download state %s: %s", self.state_path, e)
            tmp.unlink(missing_ok=True)

    # ---- progress ----------------------------------------------------------------------------

    async def _tick(self) -> None:
        last_checkpoint = time.monotonic()
        while True:
            await self._report()
            await asyncio.sleep(self.options.progress_interval)
            if time.monotonic() - last_checkpoint >= self.options.checkpoint_interval:
                self._save_state()
                last_checkpoint = time.monotonic()

    async def _report(self) -> None:
        completed = sum(p.completed for p in self.parts)
        if completed == self.reported:
            return
        self.reported = completed
        for listener in list(self.listeners):
            await emit(listener, self._event(completed))

    def _event(self, completed: int) -> dict[str, Any]:
        event: dict[str, Any] = {"status": self.request.status()}
        if self.request.digest:
            event["digest"] = self.request.digest
        return {**event, "total": self.total, "completed": completed}

    def _headers(self, url: str) -> dict[str, str]:
        """The request's headers (credentials) only for its own origin, never for a CDN it redirects to."""
        return dict(self.request.headers) if _same_origin(url, self.request.url) else {}

    def _what(self) -> str:
        return self.request.status()


def _plan(size: int, options: DownloadOptions) -> list[_Part]:
    part_size = max(-(-size // options.max_parts), options.min_part_size)
    return [_Part(offset, min(part_size, size - offset)) for offset in range(0, size, part_size)]


def _tiles(parts: list[_Part], size: int) -> bool:
    """Parts cover [0, size) in order, without gaps, each with a sane completed count."""
    offset = 0
    for part in parts:
        if part.offset != offset or part.size <= 0 or not 0 <= part.completed <= part.size:
            return False
        offset = part.end
    return offset == size


def _pwrite_all(fd: int, view: memoryview, offset: int) -> None:
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _same_origin(a: str, b: str) -> bool:
    try:
        return URL(a).origin() == URL(b).origin()
    except ValueError:
        return False


def _origin(url: str) -> str:
    try:
        return str(URL(url).origin())
    except ValueError:
        return "the server"



