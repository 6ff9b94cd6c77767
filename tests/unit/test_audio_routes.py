"""Audio routes on fake backends: multipart parsing, limits, params, model routing."""

import pytest
from fastapi.testclient import TestClient

from deployments.common.contracts import JSONFrame, TextFrame
from serve_app.admission import RateLimits
from serve_app.auth import KeyStore
from serve_app.config import AppConfig
from serve_app.ingress import create_app
from serve_app.registry import ModelRegistry
from serve_app.settings import Settings
from tests.unit.fakes import FakeHandle
from tests.unit.test_ingress import assert_envelope

LIMIT = 1000
WAV = b"RIFF" + b"\x00" * 200


def make(frames=None):
    config = AppConfig.model_validate(
        {
            "models": [
                {"id": "chat", "family": "llm", "source": "x"},
                {"id": "stt", "family": "whisper", "source": "y", "aliases": ["whisper-1"]},
                {"id": "stt.en", "family": "whisper", "source": "z"},
            ],
            "audio": {"max_upload_bytes": LIMIT},
        }
    )
    whisper = FakeHandle(frames if frames is not None else [JSONFrame({"text": "hi"})])
    preprocessor = FakeHandle([])
    handles = {"chat": FakeHandle([]), "stt": whisper, "stt.en": FakeHandle([])}
    registry = ModelRegistry(config, handles, 1, preprocessor)
    app = create_app(registry, Settings(), KeyStore([]), RateLimits(None))
    client = TestClient(app, raise_server_exceptions=False)
    return client, whisper, preprocessor


def post(client, path="/v1/audio/transcriptions", data=None, file=WAV, **kwargs):
    files = {"file": ("a.wav", file, "audio/wav")} if file is not None else None
    return client.post(path, data=data or {}, files=files, **kwargs)


def test_transcription_reaches_whisper_through_the_preprocessor():
    client, whisper, preprocessor = make()
    response = post(client, data={"model": "whisper-1", "language": "EN", "temperature": "0.2"})
    assert response.status_code == 200 and response.json() == {"text": "hi"}
    assert preprocessor.calls == [("decode", (WAV,))]
    method, (decoded, params, account) = whisper.calls[0]
    assert method == "transcribe"
    assert account is None  # without a rate limiter, nothing to charge work cut short to
    assert decoded == ("decoded", len(WAV))  # the preprocessor's result, passed on as is
    assert params["task"] == "transcribe" and params["language"] == "en"
    assert params["temperature"] == 0.2 and params["response_format"] == "json"


def test_whisper_gets_the_request_id():
    """The client's ``x-request-id`` (or the one made for the request): the Whisper replica
    names the request by it in its stats (windows decoded, shared with other requests)."""
    client, whisper, _ = make()
    assert post(client, headers={"x-request-id": "mine"}).status_code == 200
    assert whisper.calls[0][1][1]["request_id"] == "mine"
    assert post(client).status_code == 200
    assert whisper.calls[1][1][1]["request_id"] not in ("", "mine", None)


def test_default_model_and_granularities():
    client, whisper, _ = make()
    data = {"response_format": "verbose_json", "timestamp_granularities[]": ["word", "segment"]}
    assert post(client, data=data).status_code == 200
    params = whisper.calls[0][1][1]
    assert params["timestamp_granularities"] == ["word", "segment"]


def test_text_formats_are_plain_text():
    client, _, _ = make([TextFrame("WEBVTT\n", "text/vtt")])
    response = post(client, data={"response_format": "vtt"})
    assert response.text == "WEBVTT\n"
    assert response.headers["content-type"].startswith("text/vtt")


def test_translation_ignores_transcription_only_fields():
    client, whisper, _ = make()
    assert post(client, "/v1/audio/translations", data={"language": "xx"}).status_code == 200
    params = whisper.calls[0][1][1]
    assert params["task"] == "translate" and params["language"] is None


@pytest.mark.parametrize(
    ("data", "param"),
    [
        ({"response_format": "docx"}, "response_format"),
        ({"temperature": "hot"}, "temperature"),
        ({"temperature": "1.5"}, "temperature"),
        ({"language": "klingon"}, "language"),
        ({"timestamp_granularities[]": "word"}, None),  # needs verbose_json
        ({"timestamp_granularities[]": "letter", "response_format": "verbose_json"}, None),
        ({"stream": "true", "response_format": "srt"}, None),
        ({"stream": "maybe"}, "stream"),
    ],
)
def test_bad_fields_are_400(data, param):
    client, whisper, preprocessor = make()
    error = assert_envelope(post(client, data=data), 400)
    if param:
        assert error["param"] == param
    assert not preprocessor.calls and not whisper.calls  # nothing decoded for a bad request


def test_missing_file_and_non_multipart_are_400():
    client, _, _ = make()
    no_file = client.post("/v1/audio/transcriptions", files={"model": (None, "stt")})
    assert assert_envelope(no_file, 400)["param"] == "file"
    urlencoded = post(client, file=None, data={"model": "stt"})
    assert assert_envelope(urlencoded, 400)["param"] == "file"
    assert_envelope(client.post("/v1/audio/transcriptions", json={"file": "x"}), 400)
    garbled = client.post(
        "/v1/audio/transcriptions",
        content=b"--xyz\r\nthis is not a multipart body",
        headers={"content-type": "multipart/form-data; boundary=xyz"},
    )
    assert garbled.status_code == 400


def test_oversize_upload_is_413_before_any_backend():
    client, whisper, preprocessor = make()
    error = assert_envelope(post(client, file=b"\x00" * (LIMIT + 1)), 413, "file_too_large")
    assert str(LIMIT) in error["message"]
    huge = post(client, file=b"\x00" * (LIMIT * 200))  # rejected on Content-Length
    assert_envelope(huge, 413)

    def chunks():  # no Content-Length: rejected while the body streams in
        yield b'--b\r\nContent-Disposition: form-data; name="file"; filename="a"\r\n\r\n'
        for _ in range(200):
            yield b"\x00" * LIMIT

    streamed = client.post(
        "/v1/audio/transcriptions",
        content=chunks(),
        headers={"content-type": "multipart/form-data; boundary=b"},
    )
    assert_envelope(streamed, 413)
    assert not preprocessor.calls and not whisper.calls


def test_model_families_are_kept_apart():
    client, _, _ = make()
    error = assert_envelope(post(client, data={"model": "chat"}), 400, "model_not_supported")
    assert error["param"] == "model"
    assert_envelope(post(client, data={"model": "nope"}), 404, "model_not_found")
    chat = client.post(
        "/v1/chat/completions",
        json={"model": "whisper-1", "messages": [{"role": "user", "content": "x"}]},
    )
    assert_envelope(chat, 400, "model_not_supported")


def test_models_list_types():
    client, _, _ = make()
    cards = {m["id"]: m for m in client.get("/v1/models").json()["data"]}
    assert cards["stt"]["type"] == "stt" and cards["stt"]["context_length"] is None
    assert cards["chat"]["type"] == "llm"
    assert client.get("/v1/models/whisper-1").json()["id"] == "stt"
