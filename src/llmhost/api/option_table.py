"""Every model option, once: name, type, default, when it acts, bounds and meaning.

The set is Ollama's ``api.Options`` and ``api.Runner`` (api/types.go), the sampling options Ollama
dropped in 0.6.9 that llmhost still implements (``mirostat*``), and llmhost's own (``kv_cache_type``).
Validation (``api.options``), the runner a request needs (``daemon.state.DaemonState.load_spec``),
Modelfile ``PARAMETER`` lines and ``docs/options.md`` all read this table; nothing else lists options.

``when``: ``"load"`` options decide how a runner is started, so a change starts another runner;
``"request"`` options shape one request's sampling and stopping.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

INT, FLOAT, BOOL, STRING, STRINGS = "integer", "float", "boolean", "string", "array of strings"

INT32 = (-(2**31), 2**31 - 1)  # the bounds of an integer option unless its spec says otherwise
# Load options get tight bounds, so one request cannot make a runner allocate without limit.
MAX_NUM_CTX = 1 << 24  # tokens per sequence; llama.cpp's n_ctx (× parallel) is a uint32
MAX_NUM_BATCH = 1 << 16  # tokens per llama_decode; more is never faster (ubatches are ≤ 512)
MAX_NUM_THREAD = 512  # GGML_MAX_N_THREADS

# KV cache element types, as Ollama's OLLAMA_KV_CACHE_TYPE names them: f16 2 bytes an element, q8_0
# 34 bytes per 32, q4_0 18 per 32 (quantized ones need flash attention; the runner switches it on).
KV_CACHE_TYPES = ("f16", "q8_0", "q4_0")
# llama.cpp's flash attention: "auto" lets it decide (on where the backend has it), as Ollama does
# when OLLAMA_FLASH_ATTENTION is unset.
FLASH_ATTENTION_MODES = ("auto", "on", "off")
MAX_DRAFT = 16  # speculative draft tokens per step that are tried, whatever draft_num_predict says


@dataclass(frozen=True)
class OptionSpec:
    """One option of Ollama's ``options`` object (and a Modelfile ``PARAMETER``).

    ``default`` applies when neither the request nor the Modelfile sets the option; where
    ``setting`` names a ``config.Settings`` field, that setting is the default instead.
    ``zero_is_default``: 0 also means "the default" (Ollama's ``omitempty`` integers). Integers
    are int32 unless ``bounds`` says otherwise; ``choices`` are the values a string may take
    (compared in lower case).
    """

    name: str
    type: str  # INT, FLOAT, BOOL, STRING or STRINGS: also the word error messages use
    default: Any
    when: Literal["load", "request"]
    description: str
    bounds: tuple[int, int] = INT32
    choices: tuple[str, ...] = ()
    setting: str | None = None
    zero_is_default: bool = False
    origin: Literal["ollama", "ollama < 0.6.9", "llmhost"] = "ollama"


OPTIONS: tuple[OptionSpec, ...] = (
    # --- load: which runner serves the request ---------------------------------------------------
    OptionSpec("num_ctx", INT, None, "load",
               "context window per sequence, in tokens (a runner holds LLMHOST_NUM_PARALLEL of them); "
               "0: the default",
               bounds=(0, MAX_NUM_CTX), setting="context_length", zero_is_default=True),
    OptionSpec("num_batch", INT, 512, "load",
               "most prompt tokens evaluated in one step; 0: the default",
               bounds=(0, MAX_NUM_BATCH), zero_is_default=True),
    OptionSpec("num_gpu", INT, -1, "load",
               "layers offloaded to the GPU; -1: as many as fit in free VRAM, 0: none",
               bounds=(-1, INT32[1])),
    OptionSpec("main_gpu", INT, 0, "load",
               "GPU index handed to llama.cpp as its main_gpu, as Ollama does; llama.cpp's default layer "
               "split still spreads offloaded layers over every visible GPU (CUDA_VISIBLE_DEVICES chooses them)",
               bounds=(0, INT32[1])),
    OptionSpec("use_mmap", BOOL, True, "load",
               "map the weights from the file instead of reading them into memory"),
    OptionSpec("num_thread", INT, None, "load",
               "llama.cpp threads of the runner; 0: the default",
               bounds=(0, MAX_NUM_THREAD), setting="num_threads", zero_is_default=True),
    OptionSpec("kv_cache_type", STRING, None, "load",
               "KV cache element type: f16, q8_0 (half the memory) or q4_0 (a quarter); a quantized "
               "cache turns flash attention on",
               choices=KV_CACHE_TYPES, setting="kv_cache_type", origin="llmhost"),
    OptionSpec("rpc_servers", STRING, None, "load",
               "llama.cpp RPC workers (`llm worker`) to split the model's layers across, host:port,...; "
               "layers go where they fit, the rest stays here; empty: none (docs/scale-out.md)",
               setting="rpc_servers", origin="llmhost"),
    # --- request: sampling and stopping -----------------------------------------------------------
    # Defaults are Ollama's api.DefaultOptions but two: num_keep (Ollama keeps 4 tokens; we keep the
    # system prompt) and repeat_penalty (1.1 was Ollama's until it chose 1.0, off).
    OptionSpec("num_keep", INT, -1, "request",
               "leading prompt tokens kept when a long prompt is cut or the context shifts; negative: "
               "the system prompt"),
    OptionSpec("seed", INT, -1, "request",
               "random seed: the same seed and prompt give the same text; negative: a random one",
               bounds=(-(2**63), 2**63 - 1)),  # Ollama's is a Go int; the sampler takes its low 32 bits
    OptionSpec("num_predict", INT, -1, "request",
               "most tokens to generate; negative: no limit"),
    OptionSpec("top_k", INT, 40, "request",
               "sample from the k most likely tokens only; 0: all"),
    OptionSpec("top_p", FLOAT, 0.9, "request",
               "sample from the smallest set of tokens whose probabilities add up to p; 1: all"),
    OptionSpec("min_p", FLOAT, 0.0, "request",
               "drop tokens less likely than min_p times the most likely one"),
    OptionSpec("typical_p", FLOAT, 1.0, "request",
               "locally typical sampling; 1: off"),
    OptionSpec("repeat_last_n", INT, 64, "request",
               "tokens of history the repetition penalties look at; 0: none, -1: the whole context"),
    OptionSpec("temperature", FLOAT, 0.8, "request",
               "higher is more varied, lower more focused; 0: always the most likely token"),
    OptionSpec("repeat_penalty", FLOAT, 1.1, "request",
               "how much less likely tokens seen in the last repeat_last_n become; 1: off"),
    OptionSpec("presence_penalty", FLOAT, 0.0, "request",
               "lowers tokens seen in the last repeat_last_n, once whatever their count"),
    OptionSpec("frequency_penalty", FLOAT, 0.0, "request",
               "lowers tokens seen in the last repeat_last_n, by their count"),
    OptionSpec("mirostat", INT, 0, "request",
               "Mirostat sampling, which steers towards a target surprise: 1 or 2 (its versions); 0: off",
               origin="ollama < 0.6.9"),
    OptionSpec("mirostat_tau", FLOAT, 5.0, "request",
               "Mirostat's target surprise: lower is more focused", origin="ollama < 0.6.9"),
    OptionSpec("mirostat_eta", FLOAT, 0.1, "request",
               "Mirostat's learning rate", origin="ollama < 0.6.9"),
    OptionSpec("stop", STRINGS, [], "request",
               "strings that end the answer (not included in it); a Modelfile may repeat the PARAMETER"),
    # Ollama's is a load option that only a draft model uses (0 unless set, without one); llmhost
    # drafts by prompt lookup instead, per request, so changing it needs no other runner.
    OptionSpec("draft_num_predict", INT, 0, "request",
               "speculative decoding: most draft tokens per step, looked up in the prompt and the reply "
               "so far and verified in one batch, each kept token being the one the model picks from its "
               f"own row (docs/benchmarks.md); 0 or less: off; at most {MAX_DRAFT} are tried"),
)

OPTION_SPECS: dict[str, OptionSpec] = {spec.name: spec for spec in OPTIONS}
