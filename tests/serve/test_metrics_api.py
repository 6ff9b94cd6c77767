"""The Prometheus scrape of the session's Ray cluster: our request metrics with the model
label after real requests, Whisper's and vLLM's engine metrics, and every metric the Grafana
dashboard queries."""

import json
import re
import threading
import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from serve_app.metrics import METRICS
from tests.audio_files import SPEECH_EN
from tests.serve.conftest import API_KEY, ROOT

pytestmark = pytest.mark.serve

LLM = "smollm2-135m-instruct"
STT = "whisper-tiny.en"
EMBEDDING = "all-minilm-l6-v2"
DASHBOARD = ROOT / "cluster" / "grafana-dashboard.json"
# Series that must be non-zero after the requests below: (metric, labels it must carry).
EXPECTED = [
    ("ray_openai_api_requests_total", {"model": LLM, "route": "/v1/chat/completions"}),
    ("ray_openai_api_requests_total", {"model": "", "status": "401", "code": "invalid_api_key"}),
    ("ray_openai_api_requests_total", {"model": "", "status": "404", "code": "model_not_found"}),
    ("ray_openai_api_tokens_total", {"model": LLM, "kind": "prompt"}),
    ("ray_openai_api_tokens_total", {"model": LLM, "kind": "completion"}),
    ("ray_openai_api_tokens_total", {"model": EMBEDDING, "kind": "prompt"}),
    ("ray_openai_api_time_to_first_token_seconds_count", {"model": LLM}),
    ("ray_openai_api_request_duration_seconds_count", {"model": LLM, "stream": "false"}),
    ("ray_openai_api_audio_seconds_total", {"model": STT, "route": "/v1/audio/transcriptions"}),
    ("ray_whisper_realtime_factor_count", {"model": STT}),
    ("ray_whisper_batch_size_count", {"model": STT}),
    # A stream the client left after its first chunk (below): 499, nginx's "client went away".
    ("ray_openai_api_requests_total", {"model": LLM, "status": "499"}),
    ("ray_vllm_request_success_total", {"model_name": LLM}),
    ("ray_vllm_time_to_first_token_seconds_count", {"model_name": LLM}),
    ("ray_vllm_inter_token_latency_seconds_count", {"model_name": LLM}),
    # LoRA adapters: 10 asked for once each, on a replica that holds 8 (2 evicted).
    ("ray_openai_api_requests_total", {"model": f"{LLM}:pirate", "status": "200"}),
    ("ray_openai_api_adapter_loads_total", {"model": LLM, "outcome": "loaded"}),
    ("ray_openai_api_adapter_load_seconds_count", {"model": LLM}),
    ("ray_openai_api_adapter_evictions_total", {"model": LLM}),
    ("ray_openai_api_adapter_requests_total", {"model": LLM, "adapter": "pirate"}),
]
ADAPTERS = ["pirate", "robot", *(f"random-{i}" for i in range(8))]
# Gauges that must be exported (zero is fine once the requests are done).
GAUGES = [
    "ray_openai_api_requests_in_flight",
    "ray_whisper_requests_in_progress",
    "ray_vllm_kv_cache_usage_perc",
    "ray_vllm_num_requests_running",
    "ray_vllm_num_requests_waiting",
]


def scrape(url: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Sample name -> [(labels, value)] of one scrape."""
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(httpx.get(url, timeout=10).text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples


def total(samples, name: str, labels: dict[str, str]) -> float:
    return sum(
        value
        for have, value in samples.get(name, [])
        if all(have.get(k) == v for k, v in labels.items())
    )


@pytest.fixture(scope="module")
def scraped(base_url, http, client, metrics_url):
    """Scrape while real requests run until their metrics have been exported. Ray exports
    every few seconds and drops a gauge that nobody set for two export intervals (an idle
    vLLM engine sets none), so requests keep coming until every metric has been seen."""
    stop = threading.Event()

    def keep_busy() -> None:
        while not stop.is_set():
            chat = {"model": LLM, "messages": [{"role": "user", "content": "Hi"}]}
            client.chat.completions.create(**chat, max_tokens=8)
            for _ in client.chat.completions.create(**chat, max_tokens=16, stream=True):
                pass
            client.embeddings.create(model=EMBEDDING, input=["Hi", "there"])
            with SPEECH_EN.open("rb") as audio:
                client.audio.transcriptions.create(model=STT, file=audio)
            left = client.chat.completions.create(
                **chat, max_tokens=200, stream=True, extra_body={"ignore_eos": True}
            )
            next(iter(left))  # the first chunk, then the client goes away
            left.close()

    for adapter in ADAPTERS:
        client.completions.create(model=f"{LLM}:{adapter}", prompt="Hi", max_tokens=1)
    httpx.post(f"{base_url}/v1/chat/completions", headers={"Authorization": "Bearer nope"})
    http.post(
        "/v1/chat/completions",
        json={"model": "no-such", "messages": [{"role": "user", "content": "x"}]},
    )
    busy = threading.Thread(target=keep_busy, daemon=True)
    busy.start()
    seen: set[str] = set()
    deadline = time.monotonic() + 120
    try:
        while True:
            samples = scrape(metrics_url)
            seen |= set(samples)
            missing = [(n, labels) for n, labels in EXPECTED if total(samples, n, labels) <= 0]
            missing += [n for n in GAUGES if n not in seen]
            if not missing:
                return samples
            if time.monotonic() > deadline:
                pytest.fail(f"not exported after 120 s: {missing}")
            time.sleep(2)
    finally:
        stop.set()
        busy.join(timeout=60)


def test_the_scrape_shows_our_request_metrics_by_model_and_vllm_engine_metrics(scraped):
    ours = {name for name in scraped if name.startswith("ray_openai_api_")}
    for name in METRICS:  # the README's metrics table
        assert any(n == name or n.startswith(f"{name}_") for n in ours), name
    # Labels are the key's name, never its secret.
    keys = {labels.get("key") for labels, _ in scraped["ray_openai_api_requests_total"]}
    assert "env-1" in keys and not any(API_KEY in (k or "") for k in keys)


def dashboard_metric_names() -> set[str]:
    """Every metric name in the dashboard's PromQL expressions."""
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert exprs, "the dashboard has no queries"
    names = set()
    for expr in exprs:
        names |= set(re.findall(r"\b(ray_[a-zA-Z0-9_]+)", expr))
    return names


def test_every_metric_the_dashboard_queries_is_exported(scraped):
    names = dashboard_metric_names()
    assert {"ray_openai_api_requests_total", "ray_vllm_kv_cache_usage_perc"} <= names
    assert names - set(scraped) == set()
