"""A corpus of malformed requests across every endpoint: each gets the status it deserves
(never a 5xx, never a hang), errors in OpenAI's envelope."""

import json

import httpx
import pytest

from tests.openai_schema import validate
from tests.serve.conftest import API_KEY

pytestmark = pytest.mark.serve

MODEL = "smollm2-135m-instruct"
CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
TRANSCRIBE = "/v1/audio/transcriptions"
TRANSLATE = "/v1/audio/translations"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
JSON = {**AUTH, "Content-Type": "application/json"}
MSG = [{"role": "user", "content": "hi"}]


def chat(**fields) -> bytes:
    return json.dumps({"model": MODEL, "messages": MSG, "max_tokens": 2, **fields}).encode()


def nested(depth: int) -> bytes:
    return b'{"model": "m", "messages": ' + b"[" * depth + b"]" * depth + b"}"


def multipart(parts: bytes, boundary: str = "b0undary") -> tuple[bytes, dict[str, str]]:
    return parts, {**AUTH, "Content-Type": f"multipart/form-data; boundary={boundary}"}


WAV_PART = (
    b'--b0undary\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n'
    b"Content-Type: audio/wav\r\n\r\nRIFF....WAVE\r\n"
)

# (method, path, body, headers, the status it gets) -- at least 60 cases
CASES: list[tuple[str, str, bytes | None, dict[str, str], int]] = [
    # broken JSON
    ("POST", CHAT, b"{", JSON, 400),
    ("POST", CHAT, b"", JSON, 400),
    ("POST", CHAT, b"null", JSON, 400),
    ("POST", CHAT, b"[]", JSON, 400),
    ("POST", CHAT, b"123", JSON, 400),
    ("POST", CHAT, b'{"model": "x",}', JSON, 400),
    ("POST", CHAT, b"\xff\xfe\xfd", JSON, 400),
    ("POST", COMPLETIONS, b'{"model": "' + b"\\ud800" + b'", "prompt": "x"}', JSON, 400),
    ("POST", COMPLETIONS, b"{'single': 'quotes'}", JSON, 400),
    ("POST", CHAT, chat(), {**AUTH, "Content-Type": "text/plain"}, 400),
    # wrong types
    ("POST", CHAT, chat(messages="hello"), JSON, 400),
    ("POST", CHAT, chat(messages=[1, 2, 3]), JSON, 400),
    ("POST", CHAT, chat(messages=[{"role": "user"}]), JSON, 400),
    ("POST", CHAT, chat(messages=[{"role": "user", "content": 42}]), JSON, 400),
    ("POST", CHAT, chat(messages=[{"role": "user", "content": [{"type": "nope"}]}]), JSON, 400),
    ("POST", CHAT, chat(model=["a"]), JSON, 400),
    ("POST", CHAT, chat(model=None), JSON, 400),
    ("POST", CHAT, chat(stream={"yes": True}), JSON, 400),
    ("POST", CHAT, chat(stop={"a": 1}), JSON, 400),
    ("POST", CHAT, chat(tools="all of them"), JSON, 400),
    ("POST", CHAT, chat(tool_choice={"type": "function", "function": {"name": "nope"}}), JSON, 400),
    ("POST", CHAT, chat(response_format={"type": "json_schema"}), JSON, 400),
    ("POST", CHAT, chat(logit_bias={"not-a-token": 5}), JSON, 400),
    ("POST", COMPLETIONS, json.dumps({"model": MODEL, "prompt": {"a": 1}}).encode(), JSON, 400),
    ("POST", COMPLETIONS, json.dumps({"model": MODEL, "prompt": [[-1, 2]]}).encode(), JSON, 400),
    ("POST", COMPLETIONS, json.dumps({"model": MODEL, "prompt": [10**12]}).encode(), JSON, 400),
    # huge, negative, NaN numbers
    ("POST", CHAT, chat(max_tokens=10**30), JSON, 400),
    ("POST", CHAT, chat(max_tokens=-1), JSON, 400),
    ("POST", CHAT, chat(n=10**9), JSON, 400),
    ("POST", CHAT, chat(temperature=-0.5), JSON, 400),
    ("POST", CHAT, chat(top_p=7), JSON, 400),
    ("POST", CHAT, chat(seed=2**80), JSON, 400),
    ("POST", CHAT, chat(logprobs=True, top_logprobs=10**6), JSON, 400),
    ("POST", CHAT, chat(presence_penalty=1e308), JSON, 400),
    ("POST", CHAT, b'{"model": "m", "messages": [], "temperature": NaN}', JSON, 400),
    ("POST", CHAT, b'{"model": "m", "messages": [], "top_p": Infinity}', JSON, 400),
    ("POST", CHAT, b'{"model": "m", "messages": [], "max_tokens": 1e999}', JSON, 400),
    # deep nesting and huge strings
    ("POST", CHAT, nested(100_000), JSON, 400),
    ("POST", CHAT, chat(messages=[{"role": "user", "content": [[[[[[["x"]]]]]]]}]), JSON, 400),
    ("POST", CHAT, chat(model="m" * 100_000), JSON, 400),
    ("POST", CHAT, chat(messages=[{"role": "user", "content": "word " * 20_000}]), JSON, 400),
    ("POST", CHAT, chat(stop=["x" * 1024]), JSON, 200),  # the longest stop sequence
    ("POST", CHAT, chat(stop=["x" * 50_000]), JSON, 400),  # matched at every engine step
    # NUL bytes
    ("POST", CHAT, chat(model="smollm2\x00-135m-instruct"), JSON, 404),
    ("POST", CHAT, chat(messages=[{"role": "user\x00", "content": "x"}]), JSON, 400),
    ("POST", CHAT, b'{"model": "m"\x00, "messages": []}', JSON, 400),
    # path traversal and odd model ids
    ("POST", CHAT, chat(model="../../etc/passwd"), JSON, 404),
    ("POST", CHAT, chat(model="/etc/passwd"), JSON, 404),
    ("POST", CHAT, chat(model="%2e%2e%2fsecret"), JSON, 404),
    ("GET", "/v1/models/..%2F..%2Fetc%2Fpasswd", None, AUTH, 404),
    ("GET", "/v1/models/" + "a/" * 200, None, AUTH, 404),
    ("GET", "/v1/models/whisper-1%00", None, AUTH, 404),
    # bad multipart
    ("POST", TRANSCRIBE, *multipart(b"not multipart at all"), 400),
    ("POST", TRANSCRIBE, *multipart(WAV_PART), 400),  # no closing boundary
    ("POST", TRANSCRIBE, *multipart(WAV_PART + b"--b0undary--\r\n", boundary=""), 400),
    (
        "POST",
        TRANSCRIBE,
        *multipart(
            b'--b0undary\r\nContent-Disposition: form-data; name="model"'
            b"\r\n\r\nwhisper-1\r\n--b0undary--\r\n"
        ),
        400,
    ),  # fmt: skip
    ("POST", TRANSCRIBE, *multipart(WAV_PART + b"--b0undary--\r\n"), 400),  # garbage audio
    (
        "POST",
        TRANSLATE,
        *multipart(WAV_PART.replace(b'name="file"', b'name="file"; name="x"')),
        400,
    ),
    ("POST", TRANSCRIBE, *multipart(WAV_PART * 5 + b"--b0undary--\r\n"), 400),  # five files
    ("POST", TRANSCRIBE, b"{}", JSON, 400),
    ("POST", TRANSLATE, None, AUTH, 400),
    # odd Authorization headers
    ("GET", "/v1/models", None, {"Authorization": "Bearer"}, 401),
    ("GET", "/v1/models", None, {"Authorization": "Bearer , ,"}, 401),
    ("GET", "/v1/models", None, {"Authorization": "bearer " + "k" * 100_000}, 401),
    ("GET", "/v1/models", None, {"Authorization": "Basic dXNlcjpwYXNz"}, 401),
    ("GET", "/v1/models", None, {"Authorization": f"Bearer {API_KEY} extra"}, 401),
    ("GET", "/v1/models", None, {"Authorization": "Bearer é-unicode-ключ"}, 401),
    (
        "POST",
        CHAT,
        chat(),
        {"Authorization": f"Token {API_KEY}", "Content-Type": "application/json"},
        401,
    ),
    # odd routes and methods
    ("DELETE", CHAT, None, AUTH, 405),
    ("PUT", "/v1/models", b"{}", JSON, 405),
    ("GET", "/v1/../../etc/passwd", None, AUTH, 404),
    ("POST", "/v1/chat/completions/", chat(), JSON, 307),  # to the path without the slash
]


def encode_headers(headers: dict[str, str]) -> list[tuple[bytes, bytes]]:
    return [(k.encode(), v.encode("utf-8")) for k, v in headers.items()]


def test_corpus_is_big_enough():
    assert len(CASES) >= 60


@pytest.mark.parametrize(("method", "path", "body", "headers", "status"), CASES)
def test_malformed_request_gets_its_status(base_url, method, path, body, headers, status):
    with httpx.Client(base_url=base_url, timeout=30) as client:
        request = client.build_request(method, path, content=body, headers=encode_headers(headers))
        response = client.send(request)
    # The promise: the status the case deserves, an envelope for every error, no internals.
    assert response.status_code == status, (response.status_code, response.text[:300])
    if response.status_code >= 400:
        validate(response.json(), "ErrorResponse")
    assert "Traceback" not in response.text and "/site-packages/" not in response.text


def test_server_is_healthy_after_the_corpus(base_url):
    assert httpx.get(f"{base_url}/health", timeout=30).status_code == 200
