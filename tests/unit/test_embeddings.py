"""``/v1/embeddings`` on the ingress side (fake handles): strict request checks, the lane of
each model, the body passed through, usage charged to the key; the upstream client's
embeddings path; the replica's usage rewrite."""

import asyncio
import json

import httpx
import pytest
from fastapi.testclient import TestClient

from deployments.common.contracts import TextFrame
from deployments.upstream.client import UpstreamClient
from serve_app.admission import RateLimits
from serve_app.auth import APIKey, KeyStore
from serve_app.config import AppConfig
from serve_app.ingress import create_app
from serve_app.registry import ModelRegistry
from serve_app.settings import Settings
from tests.unit.fakes import FakeHandle, local_limiter
from tests.unit.test_ingress import assert_envelope

BODY = '{"object":"list","model":"emb","data":[{"index":0,"object":"embedding","embedding":[0.6,0.8]}],"usage":{"prompt_tokens":5,"total_tokens":5}}'  # noqa: E501
MODELS = [
    {"id": "chat", "family": "llm", "source": "x"},
    {
        "id": "emb",
        "family": "embedding",
        "source": "y",
        "dimensions": 2,
        "aliases": ["text-embedding-3-small"],
        "engine": {"max_model_len": 256},
    },
    {
        "id": "remote-emb",
        "family": "upstream",
        "base_url": "http://prov.test/v1",
        "capabilities": ["embeddings"],
        "dimensions": 1536,
    },
]


def make(keys: list[APIKey] | None = None, limiter: object = None):
    config = AppConfig.model_validate({"models": MODELS})
    local = FakeHandle([TextFrame(BODY, "application/json", usage={"prompt_tokens": 5.0})])
    remote = FakeHandle([TextFrame(BODY, "application/json", usage={"prompt_tokens": 5.0})])
    handles = {"chat": FakeHandle([]), "emb": local, "remote-emb": remote}
    registry = ModelRegistry(config, handles, 1)
    app = create_app(registry, Settings(), KeyStore(keys or []), RateLimits(limiter))
    return TestClient(app, raise_server_exceptions=False), local, remote


def test_the_replica_body_is_the_answer_and_the_backend_gets_vllm_fields():
    client, local, _ = make()
    body = {"model": "text-embedding-3-small", "input": ["a", "b"], "user": "u"}
    response = client.post("/v1/embeddings", json={**body, "encoding_format": "base64"})
    assert response.status_code == 200 and response.text == BODY
    assert response.headers["content-type"] == "application/json"
    ((method, (endpoint, sent, _rid)),) = local.calls
    assert (method, endpoint) == ("generate", "embeddings")
    assert sent == {"input": ["a", "b"], "encoding_format": "base64"}  # `user` is advisory


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": ""}, "input"),
        ({"input": ["ok", ""]}, "input[1]"),
        ({"input": []}, "input"),
        ({"input": [[]]}, "input[0]"),
        ({"input": ["x"] * 2049}, "input"),
        ({"input": [[1]] * 2049}, "input"),
        ({"input": [1.5]}, "input[0]"),
        ({"input": [1, -2]}, "input[1]"),
        ({"input": [[1], [3, -1]]}, "input[1][1]"),
        ({"input": None}, "input"),
        ({}, "input"),
        ({"input": "x", "encoding_format": "bytes"}, "encoding_format"),
        ({"input": "x", "dimensions": 0}, "dimensions"),
        ({"input": "x", "dimensions": True}, "dimensions"),
        ({"input": "x", "truncate_prompt_tokens": 0}, "truncate_prompt_tokens"),
        ({"input": "x", "truncate_prompt_tokens": -2}, "truncate_prompt_tokens"),
        ({"input": "x", "embed_dtype": "float16"}, "embed_dtype"),
        ({"input": "x", "stream": True}, "stream"),
    ],
)
def test_bad_requests_are_400s_naming_the_field(body, param):
    client, local, _ = make()
    response = client.post("/v1/embeddings", json={"model": "emb", **body})
    assert assert_envelope(response, 400)["param"] == param
    assert not local.calls


def test_2048_inputs_are_accepted():
    client, local, _ = make()
    assert client.post("/v1/embeddings", json={"model": "emb", "input": ["x"] * 2048}).is_success
    assert len(local.calls[0][1][1]["input"]) == 2048


def test_models_stay_in_their_lanes():
    client, local, remote = make()
    chat = {"messages": [{"role": "user", "content": "hi"}]}
    for model in ("emb", "remote-emb"):
        response = client.post("/v1/chat/completions", json={"model": model, **chat})
        assert_envelope(response, 400, "model_not_supported")
    response = client.post("/v1/embeddings", json={"model": "chat", "input": "hi"})
    assert_envelope(response, 400, "model_not_supported")
    assert not local.calls and not remote.calls


def test_an_upstream_model_that_declares_embeddings_is_forwarded():
    client, _, remote = make()
    response = client.post("/v1/embeddings", json={"model": "remote-emb", "input": "hi"})
    assert response.status_code == 200
    ((_, (endpoint, sent, _)),) = remote.calls
    assert endpoint == "embeddings" and sent == {"model": "remote-emb", "input": "hi"}


def test_models_list_types_and_dimensions():
    client, _, _ = make()
    cards = {c["id"]: c for c in client.get("/v1/models").json()["data"]}
    assert cards["emb"]["type"] == "embedding"
    assert (cards["emb"]["dimensions"], cards["emb"]["context_length"]) == (2, 256)
    assert (cards["remote-emb"]["type"], cards["remote-emb"]["dimensions"]) == ("embedding", 1536)
    assert cards["chat"]["type"] == "llm" and "dimensions" not in cards["chat"]


def test_own_scope_and_prompt_tokens_spend_the_token_budget(tmp_path):
    keys = [
        APIKey(name="emb", secret="s1", endpoints=["embeddings"], limits={"tokens_per_minute": 4}),
        APIKey(name="chat", secret="s2", endpoints=["chat-completions"]),
    ]
    client, _, _ = make(keys, local_limiter(tmp_path))
    body = {"model": "emb", "input": "hi"}
    denied = client.post("/v1/embeddings", json=body, headers={"Authorization": "Bearer s2"})
    assert_envelope(denied, 403)
    first = client.post("/v1/embeddings", json=body, headers={"Authorization": "Bearer s1"})
    assert first.status_code == 200  # 5 tokens: over the minute's 4
    again = client.post("/v1/embeddings", json=body, headers={"Authorization": "Bearer s1"})
    assert_envelope(again, 429)


def test_the_upstream_client_posts_embeddings_with_the_providers_model_id():
    seen = {}
    answer = {**json.loads(BODY), "model": "real"}

    def handler(request: httpx.Request) -> httpx.Response:
        seen["path"], seen["body"] = request.url.path, json.loads(request.content)
        return httpx.Response(200, json=answer)

    models = {"emb": {"upstream_model": "real", "timeout_s": 1, "max_retries": 0}}
    upstream = UpstreamClient(
        "prov", {"base_url": "http://p.test/v1"}, models, transport=httpx.MockTransport(handler)
    )

    async def frames():
        return [
            f async for f in upstream.generate("embeddings", {"model": "emb", "input": "a"}, "r")
        ]

    (frame,) = asyncio.run(frames())
    assert seen == {"path": "/v1/embeddings", "body": {"model": "real", "input": "a"}}
    assert frame.body["model"] == "emb" and frame.usage == {"prompt_tokens": 5.0}


def test_the_replica_answers_with_openai_usage_without_parsing_the_vectors():
    from deployments.embedding.engine import _openai_body

    vllm = (
        b'{"id":"embd-1","object":"list","created":1,"model":"emb","data":[{"index":0,'
        b'"object":"embedding","embedding":"AACAPw=="}],"usage":{"prompt_tokens":7,'
        b'"total_tokens":7,"completion_tokens":0,"prompt_tokens_details":null}}'
    )
    frame = _openai_body(vllm)
    body = json.loads(frame.text)
    assert body["usage"] == {"prompt_tokens": 7, "total_tokens": 7}
    assert body["data"][0]["embedding"] == "AACAPw==" and frame.usage == {"prompt_tokens": 7.0}
