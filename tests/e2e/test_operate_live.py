"""Operating a real daemon on SmolLM2: /metrics, /health, tokenize, admission, API keys, `llm ps`."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.conftest import start_daemon, stop_daemon

pytestmark = pytest.mark.model

MODEL = "smol:latest"
PROMPT = "Write one sentence about the sea and the wind over the harbour."


def call(url: str, path: str, body: dict | None = None, headers: dict | None = None, timeout: float = 120):
    """(status, parsed JSON body or text)."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url + path, data=data, headers={"Content-Type": "application/json",
                                                                     **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as r:
            status, raw = r.status, r.read()
    except urllib.error.HTTPError as e:
        status, raw = e.code, e.read()
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode()


def scrape(url: str) -> dict:
    status, text = call(url, "/metrics")
    assert status == 200
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: dict, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def create(daemon, smollm2_path) -> None:
    modelfile = daemon.workdir / "smol.Modelfile"
    modelfile.write_text(f"FROM {smollm2_path}\n")
    result = daemon.llm("create", "smol", "-f", str(modelfile))
    assert result.returncode == 0, result.stderr


def generate(url: str, **options) -> dict:
    status, body = call(url, "/api/generate", {"model": "smol", "prompt": PROMPT, "stream": False,
                                               "options": {"temperature": 0, "num_predict": 8, **options}})
    assert status == 200, body
    return body


def test_metrics_health_tokenize_and_ps_on_the_real_model(live_daemon, smollm2_path):
    url = live_daemon.url
    create(live_daemon, smollm2_path)
    status, tokens = call(url, "/api/tokenize", {"model": "smol", "content": "Hello world", "pieces": True})
    assert status == 200 and tokens["tokens"] == [19556, 905] and "".join(tokens["pieces"]) == "Hello world"
    assert call(url, "/api/detokenize", {"model": "smol", "tokens": tokens["tokens"]})[1]["content"] == "Hello world"

    before = scrape(url)
    first = generate(url)
    with ThreadPoolExecutor(4) as pool:  # the same prompt, concurrently: its prefix comes from the KV cache
        futures = [pool.submit(generate, url, seed=i) for i in range(4)]
        during = [scrape(url) for _ in range(3)]
        finals = [first] + [f.result() for f in futures]
    after = scrape(url)
    for earlier, later in zip([before, *during], [*during, after]):
        assert value(later, "llmhost_generated_tokens_total", model=MODEL) >= value(
            earlier, "llmhost_generated_tokens_total", model=MODEL)

    def moved(name):
        return value(after, name, model=MODEL) - value(before, name, model=MODEL)

    evaluated, cached = moved("llmhost_prompt_tokens_evaluated_total"), moved("llmhost_prompt_tokens_cached_total")
    assert evaluated + cached == sum(f["prompt_eval_count"] for f in finals), "reused + evaluated = prompt tokens"
    assert cached == sum(f["prompt_cached_count"] for f in finals) > 0
    assert moved("llmhost_generated_tokens_total") == sum(f["eval_count"] for f in finals)
    assert moved("llmhost_time_to_first_token_seconds_count") == 5
    assert value(after, "llmhost_kv_cells", model=MODEL) >= 2048 and value(after, "llmhost_model_loads_total",
                                                                           model=MODEL) == 1
    assert value(after, "llmhost_resident_bytes", model=MODEL) > 20 * 2**20

    status, health = call(url, "/health")
    assert status == 200 and health["models"] == [MODEL] and health["queue_depth"] == 0
    ps = json.loads(live_daemon.llm("ps", "--json").stdout)["models"][0]
    assert ps["parallel"] == 2 and ps["slots_in_use"] == 0 and ps["queue_depth"] == 0
    assert 0 < ps["cache_hit_rate"] < 1
    header = live_daemon.llm("ps").stdout.splitlines()[0]
    assert "SLOTS" in header and "QUEUE" in header and "CACHE HIT" in header


def test_admission_and_api_keys_on_a_real_daemon(tmp_path, smollm2_path):
    key = "sk-live-test-key"
    daemon = start_daemon(tmp_path / "d", LLMHOST_NUM_PARALLEL="1", LLMHOST_MAX_QUEUE="2", LLMHOST_API_KEY=key)
    try:
        create(daemon, smollm2_path)  # the CLI talks over the socket: no key needed
        auth = {"Authorization": f"Bearer {key}"}
        assert call(daemon.url, "/api/tags")[0] == 401
        assert call(daemon.url, "/api/tags", headers=auth)[0] == 200
        body = {"model": "smol", "prompt": PROMPT, "stream": False, "options": {"num_predict": 24}}
        assert call(daemon.url, "/api/generate", {"model": "smol"}, headers=auth)[0] == 200  # loaded
        started = time.monotonic()
        refused_at = []

        def one(_):
            status, reply = call(daemon.url, "/api/generate", body, headers=auth)
            if status == 503:
                refused_at.append(time.monotonic() - started)
            return status, reply

        with ThreadPoolExecutor(12) as pool:
            results = list(pool.map(one, range(12)))
        statuses = sorted(status for status, _ in results)
        assert statuses == [200] * 3 + [503] * 9, statuses
        assert max(refused_at) < 1.0, refused_at
        assert all("server busy" in reply["error"] for status, reply in results if status == 503)
    finally:
        stop_daemon(daemon)
