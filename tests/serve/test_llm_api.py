"""End to end: real Serve, real vLLM (SmolLM2 on CPU), real HTTP, the official openai SDK."""

import json

import httpx
import openai
import pytest
from openai import OpenAI

from tests.openai_schema import validate
from tests.serve.conftest import OTHER_KEY, model_handle
from tests.waiting import wait_until

pytestmark = pytest.mark.serve

MODEL = "smollm2-135m-instruct"
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def sse_events(response: httpx.Response) -> list[str]:
    """The ``data:`` payloads of an SSE body, in order, asserting the framing."""
    assert response.headers["content-type"].startswith("text/event-stream")
    blocks = response.text.split("\n\n")
    assert blocks[-1] == ""  # every event ends with a blank line
    payloads = []
    for block in blocks[:-1]:
        assert block.startswith("data: "), block
        payloads.append(block.removeprefix("data: "))
    assert payloads[-1] == "[DONE]"
    return payloads[:-1]


def test_health_is_open_and_reports_the_model(base_url):
    response = httpx.get(f"{base_url}/health")
    assert response.status_code == 200
    assert response.json()["models"][MODEL] == {"type": "llm", "ready": True}


def test_models_list_and_retrieve(client: OpenAI, http: httpx.Client):
    assert MODEL in [m.id for m in client.models.list()]
    model = client.models.retrieve(MODEL)
    assert model.id == MODEL and model.object == "model"
    listing = http.get("/v1/models").json()
    validate(listing, "ListModelsResponse")
    card = http.get(f"/v1/models/{MODEL}").json()
    validate(card, "Model")
    assert card["type"] == "llm" and card["context_length"] == 2048


def test_chat_answers_paris(client: OpenAI, http: httpx.Client):
    reply = client.chat.completions.create(model=MODEL, messages=QUESTION, temperature=0)
    assert "Paris" in reply.choices[0].message.content
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage.completion_tokens > 0
    raw = http.post(
        "/v1/chat/completions", json={"model": MODEL, "messages": QUESTION, "temperature": 0}
    )
    assert raw.status_code == 200
    validate(raw.json(), "CreateChatCompletionResponse")


def test_stream_equals_non_stream_at_temperature_zero(client: OpenAI):
    kwargs = {"model": MODEL, "messages": QUESTION, "temperature": 0, "max_tokens": 40}
    full = client.chat.completions.create(**kwargs).choices[0].message.content
    chunks = list(client.chat.completions.create(stream=True, **kwargs))
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == full
    assert "Paris" in streamed
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")


def test_stream_chunks_match_schema_and_include_usage(http: httpx.Client):
    body = {
        "model": MODEL,
        "messages": QUESTION,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    events = [json.loads(e) for e in sse_events(http.post("/v1/chat/completions", json=body))]
    for chunk in events:
        validate(chunk, "CreateChatCompletionStreamResponse")
    assert len({chunk["id"] for chunk in events}) == 1
    usage_chunk = events[-1]
    assert usage_chunk["choices"] == []
    usage = usage_chunk["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"] > 0
    assert all("usage" not in c or c["usage"] is None for c in events[:-1])


def test_max_tokens_gives_length(client: OpenAI):
    reply = client.chat.completions.create(
        model=MODEL, messages=QUESTION, temperature=0, max_tokens=3
    )
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage.completion_tokens == 3
    reply = client.chat.completions.create(
        model=MODEL, messages=QUESTION, temperature=0, max_completion_tokens=2
    )
    assert reply.usage.completion_tokens == 2


def test_stop_sequence_is_honoured(client: OpenAI):
    reply = client.chat.completions.create(
        model=MODEL, messages=QUESTION, temperature=0, stop=["Paris"]
    )
    assert "Paris" not in reply.choices[0].message.content
    assert reply.choices[0].finish_reason == "stop"


def test_sampling_parameters_pass_through(client: OpenAI):
    kwargs = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Name a colour."}],
        "temperature": 1.0,
        "top_p": 0.9,
        "max_tokens": 8,
        "seed": 1234,
        "presence_penalty": 0.5,
        "frequency_penalty": 0.5,
    }
    first = client.chat.completions.create(n=2, **kwargs)
    assert [c.index for c in first.choices] == [0, 1]
    one = client.chat.completions.create(**kwargs).choices[0].message.content
    again = client.chat.completions.create(**kwargs).choices[0].message.content
    assert one == again  # same seed, same sample


def test_legacy_completions(client: OpenAI, http: httpx.Client):
    done = client.completions.create(
        model=MODEL, prompt="The capital of France is", temperature=0, max_tokens=5
    )
    assert "Paris" in done.choices[0].text
    assert done.choices[0].finish_reason == "length"
    body = {"model": MODEL, "prompt": "The capital of France is", "temperature": 0, "max_tokens": 5}
    validate(http.post("/v1/completions", json=body).json(), "CreateCompletionResponse")
    events = sse_events(http.post("/v1/completions", json={**body, "stream": True}))
    for event in events:
        chunk = json.loads(event)
        # OpenAI streams `finish_reason: null` until the last chunk, as we do, though its
        # schema (shared with the non-stream object) lists no null: check all else.
        for choice in chunk["choices"]:
            if choice["finish_reason"] is None:
                choice["finish_reason"] = "stop"
        validate(chunk, "CreateCompletionResponse")
    assert json.loads(events[-1])["choices"][0]["finish_reason"] == "length"
    streamed = "".join(json.loads(e)["choices"][0]["text"] for e in events)
    assert streamed == done.choices[0].text


def test_unknown_model_is_404(client: OpenAI, http: httpx.Client):
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="gpt-nope", messages=QUESTION)
    assert info.value.code == "model_not_found"
    raw = http.post("/v1/completions", json={"model": "gpt-nope", "prompt": "x"})
    assert raw.status_code == 404
    validate(raw.json(), "ErrorResponse")


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b"{not json", None),
        ({"model": MODEL}, "messages"),
        ({"model": MODEL, "messages": "hello"}, "messages"),
        ({"model": MODEL, "messages": QUESTION, "temperature": "warm"}, "temperature"),
        ({"model": MODEL, "messages": QUESTION, "max_tokens": 999999}, "max_tokens"),
        ({"model": MODEL, "messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
        ({"model": MODEL, "messages": QUESTION, "logprobs": True, "top_logprobs": 10**6}, None),
    ],
)
def test_malformed_requests_are_400_envelopes(http: httpx.Client, body, param):
    if isinstance(body, bytes):
        response = http.post(
            "/v1/chat/completions", content=body, headers={"content-type": "application/json"}
        )
    else:
        response = http.post("/v1/chat/completions", json=body)
    assert response.status_code == 400, response.text
    payload = response.json()
    validate(payload, "ErrorResponse")
    assert payload["error"]["type"] == "invalid_request_error"
    if param:
        assert payload["error"]["param"] == param
    assert "Traceback" not in response.text


def test_sdk_sees_bad_request_error(client: OpenAI):
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=10**6)
    assert info.value.param == "max_tokens"


def test_keys_are_enforced(base_url: str):
    anonymous = OpenAI(base_url=f"{base_url}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as info:
        anonymous.models.list()
    assert info.value.code == "invalid_api_key"
    missing = httpx.post(
        f"{base_url}/v1/chat/completions", json={"model": MODEL, "messages": QUESTION}
    )
    assert missing.status_code == 401
    validate(missing.json(), "ErrorResponse")
    other = OpenAI(base_url=f"{base_url}/v1", api_key=OTHER_KEY, max_retries=0)
    assert other.models.retrieve(MODEL).id == MODEL


def test_every_response_carries_a_request_id(base_url: str, http: httpx.Client):
    responses = [
        httpx.get(f"{base_url}/health"),
        httpx.get(f"{base_url}/v1/models"),  # 401
        http.get("/v1/models"),
        http.get("/v1/no-such-route"),
        http.post("/v1/chat/completions", json={"model": "x"}),
    ]
    for response in responses:
        assert len(response.headers.get_list("x-request-id")) == 1, response.headers
    mine = http.get("/v1/models", headers={"x-request-id": "client-chosen-id"})
    assert mine.headers["x-request-id"] == "client-chosen-id"


def test_client_disconnect_aborts_generation(base_url: str, http: httpx.Client):

    llm = model_handle(f"llm-{MODEL}")
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Count from 1 to 1000, one per line."}],
        "max_tokens": 1500,
        "ignore_eos": True,
        "stream": True,
    }
    with http.stream("POST", "/v1/chat/completions", json=body) as response:
        lines = response.iter_lines()
        assert next(lines).startswith("data: ")
        assert llm.num_unfinished_requests.remote().result() == 1
    # The connection is closed mid-stream: the engine drops the request (had it not, its
    # 1500 tokens would keep it busy for over a minute).
    wait_until(lambda: llm.num_unfinished_requests.remote().result() == 0, 5, "the request dropped")
