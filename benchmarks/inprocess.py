"""In-process baselines on the same bindings: the raw llama_decode loop and Llama.create_completion."""

from __future__ import annotations

import ctypes
import time
from pathlib import Path

import llama_cpp as L

from llmhost.engine.cpu import repack_enabled


def _model_params():
    params = L.llama_model_default_params()
    params.use_extra_bufts = repack_enabled("auto")  # as the runner decides (off where AMX crashes)
    return params


def load_model(path: Path):
    L.llama_backend_init()
    return L.llama_model_load_from_file(str(path).encode(), _model_params())


def _context(model, n_ctx: int, threads: int, n_seq: int = 1):
    params = L.llama_context_default_params()
    params.n_ctx = n_ctx
    if n_seq > 1:  # one pool shared by the sequences, as the runner has it
        params.n_seq_max = n_seq
        params.kv_unified = True
    params.n_batch = 512
    params.n_threads = threads
    params.n_threads_batch = threads
    return L.llama_init_from_model(model, params)


def tokenize(vocab, text: str) -> list[int]:
    data = text.encode()
    buf = (L.llama_token * (len(data) + 16))()
    n = L.llama_tokenize(vocab, data, len(data), buf, len(buf), True, True)
    return list(buf[:n])


def raw_loop(path: Path, prompt: str, n_predict: int, threads: int, model=None) -> dict:
    """One sequence: prefill, then llama_decode + greedy native sampler per token."""
    model = model or load_model(path)
    vocab = L.llama_model_get_vocab(model)
    ctx = _context(model, 4096, threads)
    sampler = L.llama_sampler_chain_init(L.llama_sampler_chain_default_params())
    L.llama_sampler_chain_add(sampler, L.llama_sampler_init_greedy())
    tokens = tokenize(vocab, prompt)
    arr = (L.llama_token * len(tokens))(*tokens)
    started = time.perf_counter()
    assert L.llama_decode(ctx, L.llama_batch_get_one(arr, len(tokens))) == 0
    first = last = None
    produced = 0
    one = (L.llama_token * 1)()
    for _ in range(n_predict):
        token = L.llama_sampler_sample(sampler, ctx, -1)
        if L.llama_vocab_is_eog(vocab, token):
            break
        now = time.perf_counter()
        first = first or now
        last = now
        produced += 1
        one[0] = token
        assert L.llama_decode(ctx, L.llama_batch_get_one(one, 1)) == 0
    L.llama_sampler_free(sampler)
    L.llama_free(ctx)
    rate = (produced - 1) / (last - first) if produced > 1 else 0.0
    return {"tokens": produced, "rate": rate, "ttft": (first or started) - started}


def cold_first_token(path: Path, prompt: str, threads: int, n_ctx: int = 4096, n_seq: int = 1) -> float:
    """Seconds from llama_model_load_from_file to the first sampled token (a context of ``n_ctx``
    KV cells for ``n_seq`` sequences)."""
    started = time.perf_counter()
    model = load_model(path)
    vocab = L.llama_model_get_vocab(model)
    ctx = _context(model, n_ctx, threads, n_seq)
    sampler = L.llama_sampler_chain_init(L.llama_sampler_chain_default_params())
    L.llama_sampler_chain_add(sampler, L.llama_sampler_init_greedy())
    tokens = tokenize(vocab, prompt)
    arr = (L.llama_token * len(tokens))(*tokens)
    assert L.llama_decode(ctx, L.llama_batch_get_one(arr, len(tokens))) == 0
    L.llama_sampler_sample(sampler, ctx, -1)
    elapsed = time.perf_counter() - started
    L.llama_sampler_free(sampler)
    L.llama_free(ctx)
    L.llama_model_free(model)
    return elapsed


def high_level(path: Path, prompt: str, n_predict: int, threads: int) -> dict:
    """Llama.create_completion streaming, for reference (the runner's repack choice patched into its defaults)."""
    original = L.llama_cpp.llama_model_default_params

    def patched():
        params = original()
        params.use_extra_bufts = repack_enabled("auto")
        return params

    import llama_cpp.llama as high

    high.llama_cpp.llama_model_default_params = patched
    try:
        llm = L.Llama(str(path), n_ctx=4096, n_threads=threads, n_threads_batch=threads, verbose=False)
    finally:
        high.llama_cpp.llama_model_default_params = original
    first = last = None
    produced = 0
    for _ in llm.create_completion(prompt, max_tokens=n_predict, temperature=0.0, stream=True):
        now = time.perf_counter()
        first = first or now
        last = now
        produced += 1
    llm.close()
    return {"tokens": produced, "rate": (produced - 1) / (last - first) if produced > 1 else 0.0}


def silence_logs() -> None:
    """llama.cpp logs every load to stderr; keep benchmark output readable."""
    callback = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)(lambda *a: None)
    silence_logs._keep = callback  # the C side holds only a raw pointer
    L.llama_log_set(callback, ctypes.c_void_p())
