"""End to end, the upstream family against a real OpenAI-compatible server: the app itself.

The session runs examples/loopback-gateway.yaml: `gpt-4o-mini` is an upstream model whose
provider is this app over real HTTP on loopback, forwarding to smollm2-135m-instruct.
"""

import json

import httpx
import openai
import pytest
from openai import OpenAI

from tests.openai_schema import validate
from tests.serve.conftest import API_KEY

pytestmark = pytest.mark.serve

LOCAL = "smollm2-135m-instruct"
REMOTE = "gpt-4o-mini"
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def answer(client: OpenAI, model: str, **kwargs):
    return client.chat.completions.create(
        model=model, messages=QUESTION, temperature=0, max_tokens=24, **kwargs
    )


def test_upstream_answers_equal_local_ones(client: OpenAI, http: httpx.Client):
    local, remote = answer(client, LOCAL), answer(client, REMOTE)
    assert remote.model == REMOTE
    assert remote.choices[0].message.content == local.choices[0].message.content
    assert "Paris" in remote.choices[0].message.content
    assert remote.usage.total_tokens == local.usage.total_tokens
    raw = http.post(
        "/v1/chat/completions",
        json={"model": REMOTE, "messages": QUESTION, "temperature": 0, "max_tokens": 8},
    )
    validate(raw.json(), "CreateChatCompletionResponse")


def test_upstream_streams_equal_local_ones(client: OpenAI):
    def streamed(model: str) -> tuple[str, list]:
        chunks = list(answer(client, model, stream=True, stream_options={"include_usage": True}))
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        return text, chunks

    (local, _), (remote, chunks) = streamed(LOCAL), streamed(REMOTE)
    assert remote == local and "Paris" in remote
    assert all(c.model == REMOTE for c in chunks)
    assert chunks[-1].usage.total_tokens > 0


def test_legacy_completions_through_upstream(client: OpenAI):
    kwargs = {"prompt": "The capital of France is", "temperature": 0, "max_tokens": 5}
    local = client.completions.create(model=LOCAL, **kwargs)
    remote = client.completions.create(model=REMOTE, **kwargs)
    assert remote.choices[0].text == local.choices[0].text


def test_upstream_model_card_and_health(client: OpenAI, base_url: str):
    card = client.models.retrieve(REMOTE)
    assert (card.owned_by, card.model_extra["type"], card.model_extra["context_length"]) == (
        "openai",
        "llm",
        2048,
    )
    health = httpx.get(f"{base_url}/health", timeout=30).json()
    assert health["models"][REMOTE] == {"type": "llm", "ready": True}


def test_upstream_errors_come_back_in_our_envelope(client: OpenAI):
    # our strict checks pass it; the provider (the app) refuses it: same status and message
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=REMOTE, messages=QUESTION, max_tokens=10**6)
    assert "max_tokens" in info.value.message and API_KEY not in info.value.message


def test_scopes_and_token_budgets_hold_for_upstream_ids(base_url: str):
    chat_only = OpenAI(base_url=f"{base_url}/v1", api_key="chat-only-secret", max_retries=0)
    with pytest.raises(openai.PermissionDeniedError):
        answer(chat_only, REMOTE)
    budget = OpenAI(base_url=f"{base_url}/v1", api_key="gateway-tokens-secret", max_retries=0)
    first = answer(budget, REMOTE)  # > 30 tokens: the budget is spent
    assert first.usage.total_tokens > 30
    with pytest.raises(openai.RateLimitError) as info:
        answer(budget, REMOTE)
    assert int(info.value.response.headers["retry-after"]) >= 1


def test_stream_usage_is_only_sent_when_asked(http: httpx.Client):
    # the provider is always asked for usage (for budgets); the client sees it only if it asks
    body = {"model": REMOTE, "messages": QUESTION, "max_tokens": 4, "stream": True}
    events = [
        json.loads(line.removeprefix("data: "))
        for line in http.post("/v1/chat/completions", json=body).text.split("\n\n")
        if line.startswith("data: {")
    ]
    assert events and all(e.get("choices") for e in events)
