"""The one reader of LLMHOST_* environment variables.

Every setting has a default and a one-line description (shown by ``llm serve --help``).
Settings are read once into a frozen ``Settings`` and passed in; nothing else reads the environment.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmhost.api.option_table import FLASH_ATTENTION_MODES, KV_CACHE_TYPES
from llmhost.engine.cpu import REPACK_MODES
from llmhost.errors import BadRequest, ConfigError
from llmhost.units import parse_duration, parse_size

DEFAULT_HOST = "127.0.0.1:11434"


def _default_models_dir() -> str:
    import platformdirs

    return str(Path(platformdirs.user_data_dir("llmhost")) / "models")


def _default_socket() -> str:
    import warnings

    import platformdirs

    try:
        with warnings.catch_warnings():  # without XDG_RUNTIME_DIR it falls back to /tmp/runtime-<uid>: fine
            warnings.simplefilter("ignore")
            base = Path(platformdirs.user_runtime_dir("llmhost"))
    except Exception:  # no runtime dir on this platform
        base = Path(platformdirs.user_cache_dir("llmhost"))
    return str(base / "llmhost.sock")


def _physical_cores() -> int:
    """Physical cores (hyper-threads share the FPU, so llama.cpp runs best with one thread per core)."""
    try:
        pairs = set()
        with open("/proc/cpuinfo") as f:
            phys = core = None
            for line in f:
                if line.startswith("physical id"):
                    phys = line.split(":")[1].strip()
                elif line.startswith("core id"):
                    core = line.split(":")[1].strip()
                elif not line.strip():
                    if core is not None:
                        pairs.add((phys, core))
                    phys = core = None
        if pairs:
            return len(pairs)
    except OSError:
        pass
    return max(1, (os.cpu_count() or 2) // 2)


def _default_max_memory() -> str:
    """Available memory minus a reserve of 1 GiB (or 10%, whichever is larger)."""
    available = 0
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    available = int(line.split()[1]) * 1024
    except OSError:
        pass
    if not available:
        available = 8 * 1024**3
    reserve = max(1024**3, available // 10)
    return str(max(0, available - reserve))


def _host(value: str) -> str:
    value = value.strip()
    for scheme in ("http://", "https://"):
        if value.startswith(scheme):
            value = value[len(scheme):]
    value = value.rstrip("/")
    host, sep, port = value.rpartition(":")
    if not sep:
        host, port = value, "11434"
    if not host:
        host = "127.0.0.1"
    if not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError(f"bad port {port!r}")
    return f"{host}:{port}"


def _positive_int(value: str) -> int:
    n = int(value)
    if n < 1:
        raise ValueError("must be at least 1")
    return n


def _non_negative_int(value: str) -> int:
    n = int(value)
    if n < 0:
        raise ValueError("must be 0 or more")
    return n


def _duration(value: str) -> float:
    try:
        return parse_duration(value)
    except BadRequest as e:
        raise ValueError(str(e)) from None


def _timeout(value: str) -> float:
    seconds = _duration(value)
    if not 0 < seconds < float("inf"):
        raise ValueError("must be a positive duration such as 30s or 2m")
    return seconds


def _size(value: str) -> int:
    try:
        return parse_size(value)
    except BadRequest as e:
        raise ValueError(str(e)) from None


def _host_cache(value: str) -> int:
    """``auto`` (-1: as large as the runner's KV cache, at most 1 GiB), or a size; 0 and ``off`` park
    nothing."""
    lowered = value.strip().lower()
    if lowered == "auto":
        return -1
    if lowered == "off":
        return 0
    try:
        return parse_size(lowered)
    except BadRequest:
        raise ValueError("expected auto, off, or a size such as 0, 512MiB or 2GiB") from None


def _rpc_servers(value: str) -> tuple[str, ...]:
    from llmhost.engine.rpc import parse_servers  # stdlib only; the library is opened only when used

    return parse_servers(value)


def _origins(value: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in value.split(",") if part.strip())


@dataclass(frozen=True)
class ApiKeys:
    """The keys a TCP client must present (LLMHOST_API_KEY); none: no key is needed.

    Only digests are kept for comparison, and neither repr nor str shows a key, so logging the
    settings never leaks one.
    """

    keys: tuple[str, ...] = field(default=(), repr=False)

    def __bool__(self) -> bool:
        return bool(self.keys)

    def __repr__(self) -> str:
        return f"ApiKeys({len(self.keys)} configured)"

    __str__ = __repr__

    @property
    def first(self) -> str | None:
        """The key a client sends (the first one listed)."""
        return self.keys[0] if self.keys else None

    def accepts(self, candidate: str) -> bool:
        """Whether ``candidate`` is one of the keys, in time that depends on neither (digests of
        equal length, every key compared)."""
        import hashlib  # here, not at the top: the CLI reads settings on every call and needs no digests
        import hmac

        given = hashlib.sha256(candidate.encode("utf-8", "surrogateescape")).digest()
        found = False
        for key in self.keys:
            found |= hmac.compare_digest(hashlib.sha256(key.encode()).digest(), given)
        return found


def _api_keys(value: str) -> ApiKeys:
    """``k1,k2`` or ``@/path/to/file`` (one key per line, ``#`` comments); never echoes a key."""
    text = value.strip()
    if text.startswith("@"):
        path = Path(text[1:]).expanduser()
        try:
            parts = path.read_text().splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise ValueError(f"cannot read the key file {path}: {getattr(e, 'strerror', None) or e}") from None
        parts = [line.strip() for line in parts if not line.strip().startswith("#")]
    else:
        parts = [part.strip() for part in text.split(",")]
    keys = tuple(part for part in parts if part)
    if text.startswith("@") and not keys:
        raise ValueError("the key file holds no key")
    if any(not key.isascii() or not key.isprintable() or " " in key for key in keys):
        raise ValueError("a key must be printable ASCII without spaces")
    return ApiKeys(keys)


def _choice(choices: tuple[str, ...]) -> Callable[[str], str]:
    def parse(value: str) -> str:
        lowered = value.strip().lower()
        if lowered not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}")
        return lowered

    return parse


def _flash_attention(value: str) -> str:
    """auto/on/off, or Ollama's boolean spelling of OLLAMA_FLASH_ATTENTION (Go's ParseBool, t and f
    included). Where Ollama takes a value it cannot parse as on, this refuses it by name."""
    lowered = value.strip().lower()
    if lowered in FLASH_ATTENTION_MODES:
        return lowered
    if lowered in ("t", "f"):
        return "on" if lowered == "t" else "off"
    try:
        return "on" if _flag(lowered) else "off"
    except ValueError:
        raise ValueError("expected auto, on or off (or 1/0, true/false)") from None


def _flag(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("expected 1/0, true/false")


@dataclass(frozen=True)
class Variable:
    """One LLMHOST_* variable: its name, default (a string or a function giving one), parser and meaning.

    ``documented_default`` says in words what a function default gives (docs/options.md shows it,
    where this machine's value would be wrong for the next one).
    """

    name: str
    attr: str
    default: str | Callable[[], str]
    parse: Callable[[str], object]
    description: str
    secret: bool = False  # its value never appears in an error message
    documented_default: str = ""

    def default_text(self) -> str:
        return self.default() if callable(self.default) else self.default

    def documented_default_text(self) -> str:
        """The default as the docs state it: the value, or for a function default its description."""
        return self.documented_default if callable(self.default) else self.default


VARIABLES: tuple[Variable, ...] = (
    Variable("LLMHOST_HOST", "host", DEFAULT_HOST, _host,
             "TCP address the daemon listens on (Ollama clients connect here)"),
    Variable("LLMHOST_MODELS", "models", _default_models_dir, lambda v: Path(v).expanduser(),
             "directory of the model store (manifests/ and blobs/, Ollama's layout)",
             documented_default="$XDG_DATA_HOME/llmhost/models (~/.local/share/llmhost/models)"),
    Variable("LLMHOST_SOCKET", "socket", _default_socket, lambda v: Path(v).expanduser(),
             "unix socket the CLI uses to reach the daemon (mode 0600)",
             documented_default="$XDG_RUNTIME_DIR/llmhost/llmhost.sock (the platform's runtime directory)"),
    Variable("LLMHOST_KEEP_ALIVE", "keep_alive", "5m", _duration,
             "how long an idle model stays loaded (seconds or 10m/1h; negative = forever)"),
    Variable("LLMHOST_NUM_THREADS", "num_threads", lambda: str(_physical_cores()), _positive_int,
             "threads each runner uses for llama.cpp (default: physical cores)",
             documented_default="the physical cores"),
    Variable("LLMHOST_NUM_PARALLEL", "num_parallel", "4", _positive_int,
             "parallel sequences per loaded model (num_ctx is per sequence)"),
    Variable("LLMHOST_CONTEXT_LENGTH", "context_length", "4096", _positive_int,
             "default num_ctx when neither request nor Modelfile sets one"),
    Variable("LLMHOST_KV_CACHE_TYPE", "kv_cache_type", "f16", _choice(KV_CACHE_TYPES),
             "KV cache type (f16, q8_0 or q4_0) when neither request nor Modelfile sets kv_cache_type; "
             "q8_0 halves the cache, q4_0 quarters it"),
    Variable("LLMHOST_FLASH_ATTENTION", "flash_attention", "auto", _flash_attention,
             "llama.cpp's flash attention: auto (llama.cpp decides), on or off (1/0 and true/false as for "
             "OLLAMA_FLASH_ATTENTION); off can make long-context decoding faster on a CPU "
             "(docs/benchmarks.md), but a quantized KV cache needs it: with off, kv_cache_type falls back to f16"),
    Variable("LLMHOST_KV_HOST_CACHE", "kv_host_cache", "auto", _host_cache,
             "host memory per loaded model for cached prompts moved out of the KV cache while others run "
             "(idle cached prompts slow the running ones down): auto (as large as its KV cache, at most 1GiB), a size "
             "(512MiB, 2GiB), or off (idle prompts stay in the KV cache until evicted)"),
    Variable("LLMHOST_CPU_REPACK", "cpu_repack", "auto", _choice(REPACK_MODES),
             "llama.cpp's repacked CPU kernels (faster Q4_0/Q4_K): auto (on unless the CPU has AMX, "
             "whose path crashes), on or off"),
    Variable("LLMHOST_MAX_LOADED_MODELS", "max_loaded_models", "3", _positive_int,
             "most models loaded at once"),
    Variable("LLMHOST_MAX_QUEUE", "max_queue", "512", _positive_int,
             "most requests waiting per model beyond its num_parallel running ones; more get 503 at once"),
    Variable("LLMHOST_MAX_MEMORY", "max_memory", _default_max_memory, _size,
             "memory budget for loaded models (bytes or 512MiB, 2GiB; default: available minus a reserve)",
             documented_default="available memory at start less 1 GiB or 10%, whichever is more"),
    Variable("LLMHOST_LOAD_TIMEOUT", "load_timeout", "5m", _duration,
             "how long a runner may take to load a model before it is killed"),
    Variable("LLMHOST_BODY_IDLE_TIMEOUT", "body_idle_timeout", "60s", _timeout,
             "a request body that sends nothing for this long is refused (408) and its partial upload removed"),
    Variable("LLMHOST_MAX_UPLOAD", "max_upload", "1TiB", _size,
             "largest blob a client may upload (bytes or 512GiB, 1TiB); larger uploads get 413"),
    Variable("LLMHOST_SPARE_RUNNER", "spare_runner", "1", _flag,
             "keep one runner process warm (imports done, no model) so a model loads without Python start-up"),
    Variable("LLMHOST_ORIGINS", "origins", "", _origins,
             "extra browser origins allowed to call the API, comma-separated (* wildcards, e.g. chrome-extension://*)"),
    Variable("LLMHOST_DEBUG", "debug", "0", _flag,
             "verbose logging, runner output included"),
    Variable("LLMHOST_SERVE_REGISTRY", "serve_registry", "0", _flag,
             "also serve the installed models read-only over the registry protocol (/v2/), for peers to pull"),
    Variable("LLMHOST_RPC_SERVERS", "rpc_servers", "", _rpc_servers,
             "llama.cpp RPC workers (`llm worker`) whose memory and compute models are split across, "
             "host:port,...; unauthenticated: trusted networks only (docs/scale-out.md); empty: none"),
    Variable("LLMHOST_API_KEY", "api_keys", "", _api_keys,
             "API keys TCP clients must send (Authorization: Bearer KEY or x-api-key), comma-separated or "
             "@FILE with one per line; the unix socket needs none; empty: no key needed", secret=True),
)


@dataclass(frozen=True)
class Settings:
    """All daemon/CLI settings, read once from the environment."""

    host: str
    models: Path
    socket: Path
    keep_alive: float
    num_threads: int
    num_parallel: int
    context_length: int
    max_loaded_models: int
    max_queue: int
    max_memory: int
    load_timeout: float
    debug: bool
    serve_registry: bool = False
    spare_runner: bool = True
    origins: tuple[str, ...] = ()
    body_idle_timeout: float = 60.0
    max_upload: int = 1 << 40
    api_keys: ApiKeys = ApiKeys()
    kv_cache_type: str = "f16"
    cpu_repack: str = "auto"
    flash_attention: str = "auto"
    kv_host_cache: int = -1  # bytes; -1: auto
    rpc_servers: tuple[str, ...] = ()

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Parse every LLMHOST_* variable; a malformed one raises ConfigError naming it."""
        return cls(**_parse(VARIABLES, os.environ if environ is None else environ))

    @property
    def base_url(self) -> str:
        return f"http://{self.host}"


@dataclass(frozen=True)
class ClientSettings:
    """What a client of the daemon needs: where it listens and the key to send. Parsing only these
    keeps every ``llm`` call from computing the daemon's defaults (cores, memory, the store's path)."""

    socket: Path
    host: str
    api_keys: ApiKeys = ApiKeys()

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ClientSettings:
        wanted = [var for var in VARIABLES if var.attr in ("socket", "host", "api_keys")]
        return cls(**_parse(wanted, os.environ if environ is None else environ))


def _parse(variables: Iterable[Variable], environ: Mapping[str, str]) -> dict[str, Any]:
    """Each variable's value from the environment, or its default; a malformed one raises
    ConfigError naming it (never echoing a secret)."""
    values: dict[str, Any] = {}
    for var in variables:
        raw = environ.get(var.name)
        text = var.default_text() if raw is None or raw == "" else raw
        try:
            values[var.attr] = var.parse(text)
        except (ValueError, TypeError) as e:
            shown = var.name if var.secret else f"{var.name}={raw!r}"
            raise ConfigError(f"invalid {shown}: {e}") from None
    return values


def describe_variables() -> str:
    """Help text listing every variable with its default and meaning."""
    lines = []
    for var in VARIABLES:
        default = var.default_text()
        if var.attr == "max_memory":
            from llmhost.units import format_size

            default = f"{format_size(int(default))} on this machine now"
        lines.append(f"{var.name} (default {default}): {var.description}")
    return "\n".join(lines)
