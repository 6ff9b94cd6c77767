"""Metrics recorded once per /v1 request from the pipeline; /docs, /openapi.json and
/playground served without a key and without anything from the internet."""

import re
from collections import defaultdict

import pytest
from fastapi.testclient import TestClient

from deployments.common.contracts import ChunkFrame, ErrorFrame, JSONFrame, UsageFrame
from serve_app import metrics as app_metrics
from serve_app.admission import RateLimits
from serve_app.auth import APIKey, KeyStore
from serve_app.config import AppConfig
from serve_app.ingress import create_app
from serve_app.protocol.responses import ResponseRequest
from serve_app.registry import ModelRegistry
from serve_app.settings import Settings
from tests.unit.fakes import FakeHandle, local_limiter

MODEL = "tiny"
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
KEY = APIKey(name="team-a", secret="s3cret")
AUTH = {"Authorization": "Bearer s3cret"}
USAGE = {"prompt_tokens": 4.0, "completion_tokens": 6.0, "reasoning_tokens": 2.0}


class FakeMetric:
    """Stands in for a ``ray.serve.metrics`` metric; keeps what was recorded."""

    def __init__(self, name: str, **_: object) -> None:
        self.name = name
        self.default_tags: dict[str, str] = {}
        self.values: dict[tuple, list[float]] = defaultdict(list)

    def set_default_tags(self, tags: dict[str, str]) -> None:
        self.default_tags = tags

    def _add(self, value: float, tags: dict[str, str] | None) -> None:
        self.values[tuple(sorted({**self.default_tags, **(tags or {})}.items()))].append(value)

    def inc(self, value: float = 1.0, tags: dict[str, str] | None = None) -> None:
        assert value > 0  # Ray refuses anything else
        self._add(value, tags)

    observe = set = _add

    def by(self, **tags: str) -> list[float]:
        """Values recorded with (at least) these tags."""
        want = set(tags.items())
        return [v for key, values in self.values.items() if want <= set(key) for v in values]


@pytest.fixture
def recorded(monkeypatch) -> app_metrics.Metrics:
    class FakeModule:
        Counter = Histogram = Gauge = FakeMetric

    monkeypatch.setattr(app_metrics, "metrics", FakeModule)
    return app_metrics.Metrics()


@pytest.fixture
def limiter(recorded, tmp_path):
    """A real rate limiter in process: it counts the token and audio metrics."""
    return local_limiter(tmp_path)


def client_for(frames, observed: app_metrics.Metrics, keys=(KEY,), limiter=None) -> TestClient:
    config = AppConfig.model_validate({"models": [{"id": MODEL, "family": "llm", "source": "x"}]})
    registry = ModelRegistry(config, {MODEL: FakeHandle(frames)}, created=1)
    app = create_app(registry, Settings(), KeyStore(list(keys)), RateLimits(limiter), observed)
    return TestClient(app, raise_server_exceptions=False)


def test_a_finished_request_is_recorded_once_with_its_labels_and_usage(recorded, limiter):
    client = client_for([JSONFrame({"ok": True}, usage=USAGE)], recorded, limiter=limiter)
    assert client.post("/v1/chat/completions", json=CHAT, headers=AUTH).status_code == 200
    labels = {"model": MODEL, "route": "/v1/chat/completions", "key": "team-a"}
    assert recorded.requests.by(**labels, status="200", code="") == [1]
    tokens = limiter.target.metrics.tokens
    assert tokens.by(**labels, kind="prompt", ended="completed") == [4]
    assert tokens.by(**labels, kind="completion", ended="completed") == [6]
    assert tokens.by(**labels, kind="reasoning", ended="completed") == [2]
    (duration,) = recorded.duration.by(model=MODEL, stream="false")
    assert 0 <= duration < 10
    assert recorded.ttft.values == {}  # only streams have a first token to time
    assert recorded.in_flight.by(model=MODEL) == [1, 0]


def test_a_stream_records_time_to_first_token_and_its_usage_frame(recorded, limiter):
    frames = [ChunkFrame('{"a":1}'), ChunkFrame('{"a":2}'), UsageFrame(USAGE)]
    client = client_for(frames, recorded, limiter=limiter)
    response = client.post("/v1/chat/completions", json={**CHAT, "stream": True}, headers=AUTH)
    assert response.status_code == 200 and "[DONE]" in response.text
    (ttft,) = recorded.ttft.by(model=MODEL, route="/v1/chat/completions")
    (duration,) = recorded.duration.by(model=MODEL, stream="true")
    assert 0 <= ttft <= duration
    assert limiter.target.metrics.tokens.by(model=MODEL, kind="completion") == [6]


def test_an_error_inside_a_stream_counts_as_that_error(recorded):
    frames = [ChunkFrame('{"a":1}'), ErrorFrame(500, "engine died", code="engine_error")]
    client = client_for(frames, recorded)
    client.post("/v1/chat/completions", json={**CHAT, "stream": True}, headers=AUTH)
    assert recorded.requests.by(model=MODEL, status="500", code="engine_error") == [1]


def test_refusals_before_dispatch_are_counted_with_bounded_labels(recorded):
    client = client_for([JSONFrame({"ok": True})], recorded)
    client.post("/v1/chat/completions", json=CHAT, headers={"Authorization": "Bearer wrong"})
    client.post("/v1/chat/completions", json={**CHAT, "model": "no-such-model"}, headers=AUTH)
    client.post("/v1/chat/completions", json={**CHAT, "temperature": "hot"}, headers=AUTH)
    client.get("/v1/no-such-route-1", headers=AUTH)
    client.get("/v1/no-such-route-2", headers=AUTH)
    chat = {"route": "/v1/chat/completions", "model": ""}
    assert recorded.requests.by(**chat, status="401", code="invalid_api_key", key="") == [1]
    assert recorded.requests.by(**chat, status="404", code="model_not_found", key="team-a") == [1]
    assert recorded.requests.by(**chat, status="400", key="team-a") == [1]
    assert recorded.requests.by(route="other", status="404") == [1, 1]  # no path as a label
    assert recorded.in_flight.values == {}  # none of them was admitted


def test_a_refused_model_scope_is_labelled_with_the_model_and_key(recorded):
    narrow = APIKey(name="narrow", secret="n4rrow", models=["other-model"])
    client = client_for([JSONFrame({"ok": True})], recorded, keys=(KEY, narrow))
    client.post("/v1/chat/completions", json=CHAT, headers={"Authorization": "Bearer n4rrow"})
    assert recorded.requests.by(model=MODEL, key="narrow", status="403") == [1]


def test_health_docs_and_playground_are_not_recorded(recorded):
    client = client_for([JSONFrame({"ok": True})], recorded)
    for path in ("/health", "/docs", "/openapi.json", "/playground"):
        client.get(path)
    assert recorded.requests.values == {}


# Nothing the browser is told to load may come from another host.
EXTERNAL = re.compile(r"""(?:src|href)\s*=\s*["'](?:https?:)?//""", re.IGNORECASE)


def test_docs_and_openapi_need_no_key_and_load_nothing_from_the_internet(recorded):
    client = client_for([], recorded)
    page = client.get("/docs")
    assert page.status_code == 200 and "swagger-ui" in page.text
    assert not EXTERNAL.search(page.text), page.text
    for asset in re.findall(r"""["'](/static-offline-docs/[^"']+)["']""", page.text):
        assert client.get(asset).status_code == 200, asset
    assert client.get("/v1/models").status_code == 401  # the API itself still needs a key


def test_openapi_names_the_bearer_key_the_audio_form_and_examples(recorded):
    schema = client_for([], recorded).get("/openapi.json").json()
    assert schema["components"]["securitySchemes"]["apiKey"]["scheme"] == "bearer"
    chat = schema["paths"]["/v1/chat/completions"]["post"]
    assert chat["security"] == [{"apiKey": []}]
    assert chat["requestBody"]["content"]["application/json"]["example"]["messages"]
    form = schema["paths"]["/v1/audio/transcriptions"]["post"]["requestBody"]["content"]
    properties = form["multipart/form-data"]["schema"]["properties"]
    assert properties["file"]["format"] == "binary"
    assert {"model", "language", "response_format", "timestamp_granularities[]"} <= set(properties)
    translation = schema["paths"]["/v1/audio/translations"]["post"]["requestBody"]["content"]
    assert "language" not in translation["multipart/form-data"]["schema"]["properties"]
    assert "security" not in schema["paths"]["/health"]["get"]
    for path in ("/v1/responses", "/v1/conversations"):  # examples that validate
        example = schema["paths"][path]["post"]["requestBody"]["content"]["application/json"]
        assert example["example"]
    ResponseRequest.model_validate(
        schema["paths"]["/v1/responses"]["post"]["requestBody"]["content"]["application/json"][
            "example"
        ]
    )
    assert schema["paths"]["/v1/responses/{response_id}"]["get"]["security"] == [{"apiKey": []}]


def test_playground_is_one_static_page_needing_no_key_and_nothing_external(recorded):
    page = client_for([], recorded).get("/playground")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert not EXTERNAL.search(page.text)
    assert "http://" not in page.text and "https://" not in page.text
    assert "localStorage" not in page.text and "sessionStorage" not in page.text
    assert "document.cookie" not in page.text  # the key stays in the page's memory
