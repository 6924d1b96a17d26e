"""KV cache types and repacked CPU kernels, through the daemon (docs/benchmarks.md, "KV cache types"
and "Fast kernels"). Settings are compared in interleaved rounds; medians are reported."""

from __future__ import annotations

import asyncio
import ctypes
import statistics
from pathlib import Path

import aiohttp

from benchmarks.harness import GEMMA3, MODELS, SMOLLM2, TEXT, create_model, daemon, stream

KV_TYPES = ("f16", "q8_0", "q4_0")
SMOLLM2_Q4_0 = MODELS / "SmolLM2-135M-Instruct.Q4_0.gguf"  # made from the Q4_1 file (requantized)
# Random weights in a shape whose rows K-quants can hold (SmolLM2's and Gemma 3's widths, 576 and
# 640, are not multiples of 256, so their "Q4_K" files are mostly other types): kernel speed only.
SYNTHETIC_Q4_K = MODELS / "synthetic-768x8.Q4_K_S.gguf"
GREEDY = {"temperature": 0, "seed": 42, "num_predict": 128}


def _prompt(tag: str, sentences: int) -> str:
    """A raw prompt that shares no prefix with another tag's (so nothing is reused from the cache)."""
    return f"[{tag}] " + TEXT * sentences


def _runner_rss(daemon_pid: int) -> int:
    """Resident bytes of the daemon's newest model runner (one being replaced may still be exiting)."""
    newest = None
    for child in Path(f"/proc/{daemon_pid}/task/{daemon_pid}/children").read_text().split():
        try:
            if Path(f"/proc/{child}/comm").read_text().strip() != "llmhost-runner":
                continue
            started = int(Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()[19])
        except OSError:
            continue
        newest = max(newest or (started, child), (started, child))
    if newest is None:
        raise RuntimeError("no runner process found")
    for line in Path(f"/proc/{newest[1]}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("runner has no VmRSS")


def _median(values: list[float]) -> float:
    return round(statistics.median(values), 1)


async def _decode(s: aiohttp.ClientSession, url: str, model: str, tag: str, sentences: int = 1, **options) -> dict:
    body = {"model": model, "prompt": _prompt(tag, sentences), "raw": True, "keep_alive": "30m",
            "options": {**GREEDY, **options}}
    result = await stream(s, url, "/api/generate", body)
    final = result.final
    return {"decode": result.decode_rate,
            "prefill": final["prompt_eval_count"] / max(final["prompt_eval_duration"], 1) * 1e9}


def kv(rounds: int = 5, num_ctx: int = 4096, parallel: int = 4) -> dict:
    """SmolLM2 at num_ctx × parallel with each KV cache type: runner RSS and the estimate, decode
    tok/s after a short and a ~2,500-token prompt, and how many sequences fit in f16's memory."""
    from llmhost.daemon.memory import estimate
    from llmhost.registry.gguf_meta import read_gguf_info

    info = read_gguf_info(SMOLLM2)
    samples = {kv: {"rss": [], "short": [], "long": [], "prefill": []} for kv in KV_TYPES}

    async def run(d) -> None:
        await create_model(d.url, "smol", SMOLLM2)
        # A q4_0 prefill of 2,500 tokens takes ~35 s alone, minutes if other work takes the CPUs.
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, sock_read=900)) as s:
            for r in range(rounds):
                for kv in KV_TYPES:  # each change of type loads a new runner
                    options = {"num_ctx": num_ctx, "kv_cache_type": kv}
                    short = await _decode(s, d.url, "smol", f"s{r}{kv}", **options)
                    samples[kv]["rss"].append(_runner_rss(d.proc.pid))
                    long = await _decode(s, d.url, "smol", f"l{r}{kv}", sentences=60, num_predict=64, **options)
                    samples[kv]["short"].append(short["decode"])
                    samples[kv]["long"].append(long["decode"])
                    samples[kv]["prefill"].append(long["prefill"])

    with daemon(LLMHOST_NUM_PARALLEL=str(parallel)) as d:
        asyncio.run(run(d))
    budget = estimate(info, num_ctx, parallel, 512)
    result = {}
    for kv in KV_TYPES:
        fits = max(p for p in range(1, 64) if estimate(info, num_ctx, p, 512, kv) <= budget)
        result[kv] = {"rss_mib": _median([b / 2**20 for b in samples[kv]["rss"]]),
                      "estimate_mib": round(estimate(info, num_ctx, parallel, 512, kv) / 2**20, 1),
                      "decode_short_tok_s": _median(samples[kv]["short"]),
                      "decode_long_tok_s": _median(samples[kv]["long"]),
                      "prefill_long_tok_s": _median(samples[kv]["prefill"]),
                      "parallel_in_f16_memory": fits}
    result["fit_check"] = _fit_check(num_ctx, result)
    return result


def _fit_check(num_ctx: int, result: dict) -> dict:
    """Start q8_0 and q4_0 runners at the parallel count the estimate fits into f16's memory and
    measure them: their RSS against f16's at 4."""
    measured = {}

    async def run(d, parallel: int, kv: str) -> int:
        await create_model(d.url, "smol", SMOLLM2)
        async with aiohttp.ClientSession() as s:
            await _decode(s, d.url, "smol", "fit", num_ctx=num_ctx, kv_cache_type=kv)
            return _runner_rss(d.proc.pid)

    for kv in ("q8_0", "q4_0"):
        parallel = result[kv]["parallel_in_f16_memory"]
        with daemon(LLMHOST_NUM_PARALLEL=str(parallel)) as d:
            measured[f"{kv}_x{parallel}_rss_mib"] = round(asyncio.run(run(d, parallel, kv)) / 2**20, 1)
    return measured


def _quantize(source: Path, target: Path, ftype: str) -> Path:
    """llama.cpp's quantize (``LLAMA_FTYPE_MOSTLY_<ftype>``), requantizing if need be."""
    import llama_cpp.llama_cpp as L

    from benchmarks import inprocess

    inprocess.silence_logs()
    L.llama_backend_init()
    params = L.llama_model_quantize_default_params()
    params.ftype = getattr(L, f"LLAMA_FTYPE_MOSTLY_{ftype}")
    params.allow_requantize = True
    partial = target.with_suffix(".partial")
    if L.llama_model_quantize(str(source).encode(), str(partial).encode(), ctypes.byref(params)) != 0:
        raise RuntimeError("llama_model_quantize failed")
    partial.rename(target)
    return target


def make_q4_0() -> Path:
    """A Q4_0 copy of SmolLM2 (from its Q4_1 weights), made once."""
    return SMOLLM2_Q4_0 if SMOLLM2_Q4_0.exists() else _quantize(SMOLLM2, SMOLLM2_Q4_0, "Q4_0")


def make_synthetic_q4_k() -> Path:
    """A random-weight llama of 8 layers × 768 (SmolLM2's tokenizer) in Q4_K_S, made once."""
    if SYNTHETIC_Q4_K.exists():
        return SYNTHETIC_Q4_K
    from tests.support.tiny_gguf import TinyShape, write_tiny_llama

    f32 = SYNTHETIC_Q4_K.with_suffix(".f32")
    write_tiny_llama(f32, shape=TinyShape(n_layer=8, n_embd=768, n_head=12, n_head_kv=4, n_ff=2048))
    try:
        return _quantize(f32, SYNTHETIC_Q4_K, "Q4_K_S")
    finally:
        f32.unlink()


def repack(rounds: int = 5) -> dict:
    """Q4_0 (SmolLM2, requantized), Q4_K_S (random weights, see SYNTHETIC_Q4_K), Q4_K_M (Gemma 3:
    only 12.7 of its 235 MiB are Q4_K) and Q4_1 (SmolLM2, which has no repacked kernel: the
    control) with LLMHOST_CPU_REPACK on and off: decode and prefill tok/s, runner RSS
    and the estimate against it (one sequence of 4096). Two daemons run side by side and are
    asked in turn."""
    from llmhost.daemon.memory import estimate
    from llmhost.engine.cpu import repack_enabled
    from llmhost.registry.gguf_meta import read_gguf_info

    if not repack_enabled("auto"):
        return {"skipped": "this CPU has AMX, where repacked weights crash llama_decode"}
    models = {"smollm2_q4_0": make_q4_0(), "synthetic_q4_k_s": make_synthetic_q4_k(), "gemma3_q4_k_m": GEMMA3,
              "smollm2_q4_1": SMOLLM2}
    modes = ("on", "off")
    samples = {(m, mode): {"decode": [], "prefill": [], "rss": []} for m in models for mode in modes}

    async def run(daemons: dict) -> None:
        for name, path in models.items():
            for d in daemons.values():
                await create_model(d.url, name, path)
        async with aiohttp.ClientSession() as s:
            for r in range(rounds):
                for name in models:
                    for mode, d in daemons.items():
                        short = await _decode(s, d.url, name, f"d{r}{mode}")
                        long = await _decode(s, d.url, name, f"p{r}{mode}", sentences=15, num_predict=1)
                        cell = samples[(name, mode)]
                        cell["decode"].append(short["decode"])
                        cell["prefill"].append(long["prefill"])
                        cell["rss"].append(_runner_rss(d.proc.pid))
                        async with s.post(d.url + "/api/generate", json={"model": name, "keep_alive": 0}) as unload:
                            await unload.read()

    with daemon(LLMHOST_CPU_REPACK="on", LLMHOST_NUM_PARALLEL="1") as on, \
            daemon(LLMHOST_CPU_REPACK="off", LLMHOST_NUM_PARALLEL="1") as off:
        asyncio.run(run({"on": on, "off": off}))
    result = {}
    for name in models:
        row = {}
        for mode in modes:
            cell = samples[(name, mode)]
            row[f"decode_{mode}_tok_s"] = _median(cell["decode"])
            row[f"prefill_{mode}_tok_s"] = _median(cell["prefill"])
            row[f"rss_{mode}_mib"] = _median([b / 2**20 for b in cell["rss"]])
            estimated = estimate(read_gguf_info(models[name]), 4096, 1, 512, repack=mode == "on") / 2**20
            row[f"estimate_{mode}_mib"] = round(estimated, 1)
            row[f"estimate_{mode}_ratio"] = round(estimated / row[f"rss_{mode}_mib"], 3)
        row["decode_ratio"] = round(row["decode_on_tok_s"] / row["decode_off_tok_s"], 3)
        row["prefill_ratio"] = round(row["prefill_on_tok_s"] / row["prefill_off_tok_s"], 3)
        result[name] = row
    return result
