"""Ingress logic on a fake backend: routing, auth, envelopes, SSE framing."""

import json

import pytest
from fastapi.testclient import TestClient

from deployments.common.contracts import ChunkFrame, ErrorFrame, JSONFrame
from serve_app.admission import RateLimits
from serve_app.auth import APIKey, KeyStore, load_keys
from serve_app.config import AppConfig
from serve_app.ingress import create_app
from serve_app.registry import ModelRegistry
from serve_app.settings import Settings
from tests.openai_schema import validate
from tests.unit.fakes import FakeHandle

MODEL = "tiny"
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}


def make_client(
    handle: FakeHandle,
    keys: list[str] | None = None,
    *,
    extra: dict | None = None,
    key_records: list[APIKey] | None = None,
    limiter: object = None,
) -> TestClient:
    config = AppConfig.model_validate(
        {
            "models": [{"id": MODEL, "family": "llm", "source": "x", "aliases": ["alias-1"]}],
            **(extra or {}),
        }
    )
    registry = ModelRegistry(config, {MODEL: handle}, created=123)
    store = KeyStore(load_keys(keys or [], None) + (key_records or []))
    app = create_app(registry, Settings(), store, RateLimits(limiter))
    return TestClient(app, raise_server_exceptions=False)


def assert_envelope(response, status: int, code: str | None = None) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    validate(body, "ErrorResponse")
    assert set(body["error"]) == {"message", "type", "param", "code"}
    if code is not None:
        assert body["error"]["code"] == code
    return body["error"]


def sse_lines(response) -> list[str]:
    return [line for line in response.text.split("\n\n") if line]


def test_models_list_and_retrieve_match_openai_schema():
    client = make_client(FakeHandle([]))
    listing = client.get("/v1/models").json()
    validate(listing, "ListModelsResponse")
    assert listing["data"][0] == {
        "id": MODEL,
        "object": "model",
        "created": 123,
        "owned_by": "ray-openai-serve",
        "type": "llm",
        "context_length": 2048,
    }
    validate(client.get(f"/v1/models/{MODEL}").json(), "Model")
    assert client.get("/v1/models/alias-1").json()["id"] == MODEL
    assert_envelope(client.get("/v1/models/org%2F..%2Fsecret"), 404, "model_not_found")


def test_chat_json_frame_is_returned_and_alias_routes_to_model():
    body = {"id": "x", "object": "chat.completion"}
    handle = FakeHandle([JSONFrame(body)])
    client = make_client(handle)
    response = client.post("/v1/chat/completions", json={**CHAT, "model": "alias-1", "top_k": 5})
    assert response.status_code == 200
    assert response.json() == body
    method, (endpoint, sent, request_id) = handle.calls[0]
    assert method == "generate"
    assert endpoint == "chat"
    assert sent["top_k"] == 5  # extra fields pass through to vLLM
    assert "temperature" not in sent  # unset fields stay unset
    assert request_id and response.headers.get("x-request-id") in (None, request_id)


def test_stream_is_framed_as_sse_and_ends_with_done():
    handle = FakeHandle([ChunkFrame('{"a":1}'), ChunkFrame('{"a":2}')])
    response = make_client(handle).post("/v1/completions", json={"model": MODEL, "prompt": "x"})
    assert response.headers["content-type"].startswith("text/event-stream")
    assert sse_lines(response) == ['data: {"a":1}', 'data: {"a":2}', "data: [DONE]"]


def test_error_mid_stream_becomes_error_event_then_done():
    handle = FakeHandle([ChunkFrame("{}"), ErrorFrame(500, "boom"), ChunkFrame("{}")])
    lines = sse_lines(make_client(handle).post("/v1/chat/completions", json=CHAT))
    assert lines[0] == "data: {}"
    error = json.loads(lines[1].removeprefix("data: "))
    validate(error, "ErrorResponse")
    assert lines[2:] == ["data: [DONE]"]


def test_backend_crash_mid_stream_reports_request_id_only():
    handle = FakeHandle([ChunkFrame("{}"), RuntimeError("Traceback /home/secret pid 42")])
    text = make_client(handle).post("/v1/chat/completions", json=CHAT).text
    assert "secret" not in text and "Traceback" not in text
    assert text.endswith("data: [DONE]\n\n")


def test_backend_error_frame_keeps_status_and_param():
    handle = FakeHandle([ErrorFrame(400, "max_tokens too big", param="max_tokens")])
    error = assert_envelope(make_client(handle).post("/v1/chat/completions", json=CHAT), 400)
    assert error["param"] == "max_tokens"
    assert handle.streams[0].cancelled


def test_backend_call_failure_is_503_without_internals():
    handle = FakeHandle(RuntimeError("ActorDiedError at /opt/ray/secret.py"))
    response = make_client(handle).post("/v1/chat/completions", json=CHAT)
    error = assert_envelope(response, 503)
    assert "secret" not in error["message"]
    assert "request id" in error["message"]


def test_unknown_model_is_404_model_not_found():
    response = make_client(FakeHandle([])).post(
        "/v1/chat/completions", json={**CHAT, "model": "gpt-9"}
    )
    error = assert_envelope(response, 404, "model_not_found")
    assert error["param"] == "model"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": CHAT["messages"]}, "model"),
        ({"model": MODEL}, "messages"),
        ({**CHAT, "messages": []}, "messages"),
        ({**CHAT, "temperature": "hot"}, "temperature"),
        ({**CHAT, "temperature": 7}, "temperature"),
        ({**CHAT, "top_p": -1}, "top_p"),
        ({**CHAT, "n": 0}, "n"),
        ({**CHAT, "max_tokens": -5}, "max_tokens"),
        ({**CHAT, "stream": "yes please"}, "stream"),
        ({**CHAT, "stop": [1, 2]}, "stop"),
        ({**CHAT, "stop": "x" * 1025}, "stop"),
        ({**CHAT, "stop": ["ok", "x" * 50_000]}, "stop[1]"),
        ({**CHAT, "messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
        ({**CHAT, "messages": ["just text"]}, "messages[0]"),
    ],
)
def test_invalid_bodies_are_400_with_param(body, param):
    response = make_client(FakeHandle([])).post("/v1/chat/completions", json=body)
    error = assert_envelope(response, 400)
    assert error["param"] is not None and error["param"].startswith(param)


@pytest.mark.parametrize(
    "raw", [b"{bad json", b"", b"[1, 2]", b'"string"', b'{"model": NaN}', b"\x00\xff"]
)
def test_unparseable_bodies_are_400(raw):
    client = make_client(FakeHandle([]))
    response = client.post(
        "/v1/chat/completions", content=raw, headers={"content-type": "application/json"}
    )
    assert_envelope(response, 400)


def test_nan_sampling_value_is_rejected():
    raw = b'{"model": "tiny", "messages": [{"role": "user", "content": "x"}], "temperature": NaN}'
    response = make_client(FakeHandle([])).post(
        "/v1/chat/completions", content=raw, headers={"content-type": "application/json"}
    )
    assert_envelope(response, 400)


def test_unknown_route_and_method_use_envelope():
    client = make_client(FakeHandle([]))
    assert_envelope(client.get("/v1/nothing"), 404)
    assert_envelope(client.get("/v1/chat/completions"), 405)


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic k1"}, {"Authorization": "k1"}],
)
def test_keys_required_when_configured(headers):
    client = make_client(FakeHandle([JSONFrame({})]), keys=["k1", "k2"])
    assert_envelope(client.get("/v1/models", headers=headers), 401, "invalid_api_key")
    assert_envelope(client.post("/v1/chat/completions", json=CHAT, headers=headers), 401)


def test_any_configured_key_is_accepted_and_health_is_open():
    client = make_client(FakeHandle([JSONFrame({})]), keys=["k1", "k2"])
    assert client.get("/v1/models", headers={"Authorization": "Bearer k2"}).status_code == 200
    assert client.get("/health").status_code == 200


def test_health_reports_each_model_and_503_when_one_is_down():
    ok = make_client(FakeHandle([])).get("/health")
    assert ok.status_code == 200
    assert ok.json() == {"status": "ok", "models": {MODEL: {"type": "llm", "ready": True}}}
    down = make_client(FakeHandle([], ready=False)).get("/health")
    assert down.status_code == 503
    assert down.json()["models"][MODEL]["ready"] is False
    assert "secret" not in down.text
