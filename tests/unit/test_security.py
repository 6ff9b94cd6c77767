"""Scoped keys, body and time limits, backpressure, CORS (fake backends). Rate limits:
test_rate_limits.py."""

import asyncio
import hashlib
import logging

import pytest
from ray.serve.exceptions import BackPressureError

from deployments.common.contracts import JSONFrame
from serve_app.auth import APIKey, load_keys
from serve_app.log import LOGGER
from tests.unit.fakes import FakeHandle
from tests.unit.test_ingress import CHAT, MODEL, assert_envelope, make_client

OK = [JSONFrame({"ok": True}, usage={"prompt_tokens": 4, "completion_tokens": 6})]


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def scoped(**kwargs) -> APIKey:
    return APIKey(name=kwargs.pop("name", "scoped"), secret="s3cret", **kwargs)


def test_key_without_endpoint_scope_is_403():
    client = make_client(FakeHandle(OK), key_records=[scoped(endpoints=["models"])])
    assert client.get("/v1/models", headers=bearer("s3cret")).status_code == 200
    error = assert_envelope(
        client.post("/v1/chat/completions", json=CHAT, headers=bearer("s3cret")),
        403,
        "permission_denied",
    )
    assert "chat-completions" in error["message"] and "s3cret" not in error["message"]


def test_key_without_model_scope_is_403_and_does_not_see_it():
    client = make_client(FakeHandle(OK), key_records=[scoped(models=["other-model"])])
    headers = bearer("s3cret")
    error = assert_envelope(
        client.post("/v1/chat/completions", json=CHAT, headers=headers), 403, "permission_denied"
    )
    assert error["param"] == "model"
    assert client.get("/v1/models", headers=headers).json()["data"] == []
    assert_envelope(client.get(f"/v1/models/{MODEL}", headers=headers), 403)


def test_model_scope_accepts_aliases_and_sha256_keys():
    digest = hashlib.sha256(b"hashed-secret").hexdigest()
    key = APIKey(name="hashed", sha256=digest, models=["alias-1"])
    client = make_client(FakeHandle(OK), key_records=[key])
    ok = client.post("/v1/chat/completions", json=CHAT, headers=bearer("hashed-secret"))
    assert ok.status_code == 200
    assert_envelope(client.get("/v1/models", headers=bearer(digest)), 401)  # digest != secret


def test_keys_file_and_validation(tmp_path):
    path = tmp_path / "keys.yaml"
    path.write_text(
        "keys:\n"
        "  - name: team-a\n"
        "    secret: a-secret\n"
        "    endpoints: [chat-completions]\n"
        "    models: [smollm2-135m-instruct]\n"
        "    limits: {requests_per_minute: 60, tokens_per_minute: 10000}\n"
        f"  - name: team-b\n    sha256: {'ab' * 32}\n"
    )
    keys = load_keys(["plain"], str(path))
    assert [k.name for k in keys] == ["env-1", "team-a", "team-b"]
    assert keys[1].limits.tokens_per_minute == 10000
    path.write_text("keys:\n  - name: bad\n    secret: x\n    sha256: " + "ab" * 32 + "\n")
    with pytest.raises(ValueError, match="exactly one"):
        load_keys([], str(path))
    path.write_text("keys:\n  - name: x\n    secret: a\n    endpoints: [everything]\n")
    with pytest.raises(ValueError):
        load_keys([], str(path))
    path.write_text("keys:\n  - {name: d, secret: a}\n  - {name: d, secret: b}\n")
    with pytest.raises(ValueError, match="duplicate"):
        load_keys([], str(path))


def test_logs_name_the_key_never_the_secret(caplog):
    client = make_client(FakeHandle(OK), key_records=[scoped(name="team-a")])
    with caplog.at_level(logging.INFO, logger=LOGGER):
        client.post("/v1/chat/completions", json=CHAT, headers=bearer("s3cret"))
        client.post("/v1/chat/completions", json=CHAT, headers=bearer("wrong-secret"))
    assert "key=team-a" in caplog.text
    assert "s3cret" not in caplog.text and "wrong-secret" not in caplog.text


def test_json_body_limit_is_413():
    client = make_client(FakeHandle(OK), extra={"limits": {"max_body_bytes": 2048}})
    big = {**CHAT, "messages": [{"role": "user", "content": "x" * 4096}]}
    assert_envelope(client.post("/v1/chat/completions", json=big), 413, "request_too_large")

    def chunks():  # no Content-Length: stopped while streaming in
        yield b'{"model": "tiny", "messages": [{"role": "user", "content": "'
        for _ in range(10):
            yield b"y" * 1024
        yield b'"}]}'

    streamed = client.post(
        "/v1/chat/completions", content=chunks(), headers={"content-type": "application/json"}
    )
    assert_envelope(streamed, 413, "request_too_large")
    assert client.post("/v1/chat/completions", json=CHAT).status_code == 200


class SlowHandle(FakeHandle):
    def __init__(self) -> None:
        super().__init__([])
        self.cancelled = []

    def __getattr__(self, name):
        handle = self

        class Slow:
            def __aiter__(self):
                return self

            async def __anext__(self):
                await asyncio.sleep(30)

            def cancel(self):
                handle.cancelled.append(True)

        return type("M", (), {"remote": staticmethod(lambda *a, **k: Slow())})()


@pytest.mark.parametrize(
    ("stream", "limit"), [(False, "request_timeout_s"), (True, "stream_ttft_timeout_s")]
)
def test_timeouts_are_504_and_cancel_the_backend(stream, limit):
    handle = SlowHandle()
    client = make_client(handle, extra={"limits": {limit: 0.2}})
    response = client.post("/v1/chat/completions", json={**CHAT, "stream": stream})
    error = assert_envelope(response, 504, "timeout")
    assert "request id" in error["message"]
    assert handle.cancelled


class FullQueueHandle(FakeHandle):
    """Serve raises BackPressureError from ``.remote()`` itself when the queue is full."""

    def __getattr__(self, name):
        def remote(*args, **_):
            raise BackPressureError(num_queued_requests=10, max_queued_requests=10)

        return type("M", (), {"remote": staticmethod(remote)})()


@pytest.mark.parametrize(
    "handle",
    [
        FakeHandle(BackPressureError(num_queued_requests=10, max_queued_requests=10)),
        FullQueueHandle([]),
    ],
)
def test_full_queue_is_503_with_retry_after(handle):
    response = make_client(handle).post("/v1/chat/completions", json=CHAT)
    assert_envelope(response, 503, "overloaded")
    assert response.headers["retry-after"] == "2"


def test_cors_is_off_by_default_and_configurable():
    preflight = {
        "Origin": "https://app.example",
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type",
    }
    closed = make_client(FakeHandle(OK))
    response = closed.options("/v1/chat/completions", headers=preflight)
    assert "access-control-allow-origin" not in response.headers
    opened = make_client(FakeHandle(OK), extra={"cors_allow_origins": ["https://app.example"]})
    response = opened.options("/v1/chat/completions", headers=preflight)
    assert response.headers["access-control-allow-origin"] == "https://app.example"
