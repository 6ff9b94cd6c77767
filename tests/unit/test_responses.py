"""The Responses bridge and routes on a fake chat backend and a real SQLite store, driven by
the official SDK (its strict stream accumulator parses every stream)."""

import asyncio
import json
import time

import openai
import pytest
from fastapi.testclient import TestClient

from deployments.common.contracts import ChunkFrame, ErrorFrame, UsageFrame
from serve_app.auth import APIKey, KeyStore
from serve_app.config import AppConfig
from serve_app.ingress import create_app
from serve_app.protocol.responses import ResponseRequest, to_messages
from serve_app.ratelimit import RateLimits
from serve_app.registry import ModelRegistry
from serve_app.settings import Settings
from serve_app.store.sqlite import SQLiteStore
from tests.openai_schema import _document, validate
from tests.unit.fakes import FakeHandle
from tests.unit.test_ingress import assert_envelope

MODEL = "smart"
USAGE = {"prompt_tokens": 7, "completion_tokens": 5, "total_tokens": 12}
TOOL = {"type": "function", "name": "get_weather", "parameters": {"type": "object"}}
EVENT_SCHEMAS = {  # event type -> OpenAI's schema of it
    "response.created": "ResponseCreatedEvent",
    "response.in_progress": "ResponseInProgressEvent",
    "response.output_item.added": "ResponseOutputItemAddedEvent",
    "response.output_item.done": "ResponseOutputItemDoneEvent",
    "response.content_part.added": "ResponseContentPartAddedEvent",
    "response.content_part.done": "ResponseContentPartDoneEvent",
    "response.output_text.delta": "ResponseTextDeltaEvent",
    "response.output_text.done": "ResponseTextDoneEvent",
    "response.reasoning_text.delta": "ResponseReasoningTextDeltaEvent",
    "response.reasoning_text.done": "ResponseReasoningTextDoneEvent",
    "response.function_call_arguments.delta": "ResponseFunctionCallArgumentsDeltaEvent",
    "response.function_call_arguments.done": "ResponseFunctionCallArgumentsDoneEvent",
    "response.completed": "ResponseCompletedEvent",
    "response.incomplete": "ResponseIncompleteEvent",
    "response.failed": "ResponseFailedEvent",
    "error": "ResponseErrorEvent",
}


def chunk(delta=None, finish=None, usage=None, logprobs=None):
    choice = {"index": 0, "delta": delta or {}, "finish_reason": finish}
    if logprobs is not None:
        choice["logprobs"] = {"content": logprobs}
    body = {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": MODEL,
        "choices": [] if usage else [choice],
    }
    if usage:
        body["usage"] = usage
    return ChunkFrame(json.dumps(body))


def text_frames(*pieces, finish="stop", reasoning=()):
    frames = [chunk({"role": "assistant", "content": ""})]
    frames += [chunk({"reasoning": r}) for r in reasoning]
    frames += [chunk({"content": p}) for p in pieces]
    return [*frames, chunk(finish=finish), chunk(usage=USAGE), UsageFrame({"prompt_tokens": 7.0})]


def call_frames():
    call = {
        "index": 0,
        "id": "call_1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": ""},
    }
    return [
        chunk({"role": "assistant"}),
        chunk({"tool_calls": [call]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"city": '}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": '"Oslo"}'}}]}),
        chunk(finish="tool_calls"),
        chunk(usage=USAGE),
    ]


class App:
    """The ingress on a fake LLM handle and a real SQLite store; ``sdk(key)`` an OpenAI
    client on it."""

    def __init__(self, tmp_path, keys=(), llm=None):
        config = AppConfig.model_validate(
            {
                "models": [
                    {
                        "id": MODEL, "family": "llm", "source": "x",
                        "engine": {"tool_call_parser": "hermes", "enable_auto_tool_choice": True,
                                   "reasoning_parser": "think_tags"},
                    },
                    {"id": "plain", "family": "llm", "source": "x"},
                    {"id": "stt", "family": "whisper", "source": "y"},
                ],
                "store": {"max_input_items": 50, "max_chain": 5},
            }
        )  # fmt: skip
        self.llm = llm or FakeHandle(text_frames("Hello", " there"))
        handles = {MODEL: self.llm, "plain": self.llm, "stt": FakeHandle([])}
        registry = ModelRegistry(config, handles, 1)
        self.store = SQLiteStore(str(tmp_path / "r.sqlite3"), 86400)
        asyncio.run(self.store.start())
        app = create_app(registry, Settings(), KeyStore(list(keys)), RateLimits(None),
                         store=self.store)  # fmt: skip
        self.http = TestClient(app, raise_server_exceptions=False)

    def sdk(self, key="k"):
        return openai.OpenAI(api_key=key, base_url="http://testserver/v1", http_client=self.http,
                             max_retries=0)  # fmt: skip

    def sent(self, n=-1):
        """The chat body the backend got in call ``n``."""
        return self.llm.calls[n][1][1]

    def post(self, key=None, **body):
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return self.http.post("/v1/responses", json={"model": MODEL, **body}, headers=headers)


@pytest.fixture
def app(tmp_path):
    made = App(tmp_path)
    with made.http:  # one event loop for the whole test: background tasks outlive requests
        yield made


def test_create_retrieve_input_items_delete(app):
    client = app.sdk()
    response = client.responses.create(model=MODEL, input="Say hello", instructions="Be brief.")
    assert response.status == "completed" and response.output_text == "Hello there"
    assert response.usage.input_tokens == 7 and response.usage.output_tokens == 5
    assert response.id.startswith("resp_") and response.instructions == "Be brief."
    raw = app.http.get(f"/v1/responses/{response.id}").json()
    validate(raw, "Response")
    assert raw == client.responses.retrieve(response.id).model_dump(mode="json", exclude_unset=True)
    assert app.sent()["messages"] == [
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hello"}
    ]  # fmt: skip
    assert app.sent()["stream"] is True and app.sent()["stream_options"] == {"include_usage": True}
    items = client.responses.input_items.list(response.id)
    assert [i.content[0].text for i in items.data] == ["Say hello"]
    validate(app.http.get(f"/v1/responses/{response.id}/input_items").json(), "ResponseItemList")
    client.responses.delete(response.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(response.id)
    assert_envelope(app.http.delete(f"/v1/responses/{response.id}"), 404, "not_found")


def test_the_sdk_stream_helper_accepts_the_stream_and_it_matches_the_stored_one(app):
    app.llm.frames = text_frames("The ", "answer", reasoning=("think", "ing"))
    client = app.sdk()
    with client.responses.stream(model=MODEL, input="q", reasoning={"effort": "low"}) as stream:
        events = list(stream)
        final = stream.get_final_response()
    numbers = [e.sequence_number for e in events]
    assert numbers == list(range(len(events)))
    kinds = [e.type for e in events]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] == "response.completed"
    assert "response.reasoning_text.delta" in kinds and "response.output_text.done" in kinds
    assert [o.type for o in final.output] == ["reasoning", "message"]
    assert final.output[0].content[0].text == "thinking" and final.output_text == "The answer"
    stored = client.responses.retrieve(final.id)
    assert stored.output_text == "The answer" and stored.status == "completed"
    assert app.sent()["reasoning_effort"] == "low"
    raw = app.http.post("/v1/responses", json={"model": MODEL, "input": "q", "stream": True})
    for block in raw.text.strip().split("\n\n"):
        kind, data = block.split("\n")
        event = json.loads(data.removeprefix("data: "))
        assert kind == f"event: {event['type']}"
        validate(event, EVENT_SCHEMAS[event["type"]])


def test_function_calls_round_trip_through_a_chain(app):
    app.llm.frames = call_frames()
    client = app.sdk()
    with client.responses.stream(model=MODEL, input="Weather in Oslo?", tools=[TOOL],
                                 tool_choice="required") as stream:  # fmt: skip
        first = stream.get_final_response()
    (call,) = first.output
    assert call.type == "function_call" and call.name == "get_weather"
    assert call.arguments == '{"city": "Oslo"}' and call.call_id == "call_1"
    assert app.sent()["tools"][0]["function"]["name"] == "get_weather"
    assert app.sent()["tool_choice"] == "required"
    app.llm.frames = text_frames("Sunny.")
    second = client.responses.create(
        model=MODEL, previous_response_id=first.id, tools=[TOOL],
        input=[{"type": "function_call_output", "call_id": "call_1", "output": '{"sky": "clear"}'}],
    )  # fmt: skip
    assert second.output_text == "Sunny." and second.previous_response_id == first.id
    assert app.sent()["messages"] == [
        {"role": "user", "content": "Weather in Oslo?"},
        {"role": "assistant", "tool_calls": [{"id": "call_1", "type": "function", "function": {
            "name": "get_weather", "arguments": '{"city": "Oslo"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": '{"sky": "clear"}'},
    ]  # fmt: skip


def test_reasoning_survives_in_a_chain_and_instructions_do_not(app):
    app.llm.frames = text_frames("Four.", reasoning=("2+2",))
    client = app.sdk()
    first = client.responses.create(model=MODEL, input="2+2?", instructions="Terse.",
                                    reasoning={"effort": "high"})  # fmt: skip
    app.llm.frames = text_frames("Eight.")
    client.responses.create(model=MODEL, input="Double it.", previous_response_id=first.id)
    assert app.sent()["messages"] == [
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "Four.", "reasoning": "2+2"},
        {"role": "user", "content": "Double it."},
    ]


def test_max_output_tokens_ends_incomplete(app):
    app.llm.frames = text_frames("Once upon", finish="length")
    client = app.sdk()
    response = client.responses.create(model=MODEL, input="story", max_output_tokens=16)
    assert response.status == "incomplete"
    assert response.incomplete_details.reason == "max_output_tokens"
    assert app.sent()["max_completion_tokens"] == 16
    with client.responses.stream(model=MODEL, input="story", max_output_tokens=16) as stream:
        kinds = [e.type for e in stream]
    assert kinds[-1] == "response.incomplete"
    assert client.responses.retrieve(response.id).status == "incomplete"


def test_an_engine_error_mid_stream_ends_failed_and_is_stored_so(app):
    app.llm.frames = [chunk({"content": "Half"}), ErrorFrame(500, "engine died")]
    events = list(app.sdk().responses.create(model=MODEL, input="x", stream=True))
    assert events[-1].type == "response.failed"
    failed = events[-1].response
    assert failed.error.code == "server_error" and failed.output[0].status == "incomplete"
    assert app.sdk().responses.retrieve(failed.id).status == "failed"


def test_a_refusal_before_output_is_an_http_error_and_nothing_is_stored(app):
    app.llm.frames = [ErrorFrame(400, "prompt too long", param="messages", code="too_long")]
    error = assert_envelope(app.post(input="x"), 400, "too_long")
    assert error["param"] == "input"


def test_unstored_responses_cannot_be_read_or_chained(app):
    client = app.sdk()
    response = client.responses.create(model=MODEL, input="x", store=False)
    assert response.store is False
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(response.id)
    error = assert_envelope(app.post(input="y", previous_response_id=response.id), 404)
    assert error["param"] == "previous_response_id"


def test_responses_belong_to_the_key_that_made_them(tmp_path):
    keys = [APIKey(name="alice", secret="a-secret"), APIKey(name="bob", secret="b-secret")]
    app = App(tmp_path, keys)
    mine = app.sdk("a-secret").responses.create(model=MODEL, input="x")
    bob = app.sdk("b-secret")
    for call in (
        lambda: bob.responses.retrieve(mine.id),
        lambda: bob.responses.delete(mine.id),
        lambda: bob.responses.input_items.list(mine.id),
        lambda: bob.responses.create(model=MODEL, input="y", previous_response_id=mine.id),
    ):
        with pytest.raises(openai.NotFoundError):
            call()
    assert app.sdk("a-secret").responses.retrieve(mine.id).id == mine.id
    scoped = App(tmp_path / "s", [APIKey(name="chat", secret="c", endpoints=["chat-completions"])])
    assert_envelope(scoped.post(key="c", input="x"), 403, "permission_denied")


def test_input_items_pages(app):
    items = [{"role": "user", "content": f"m{i}"} for i in range(7)]
    rid = app.post(input=items).json()["id"]
    page = app.http.get(f"/v1/responses/{rid}/input_items?limit=3&order=asc").json()
    assert [i["content"][0]["text"] for i in page["data"]] == ["m0", "m1", "m2"]
    assert page["has_more"] and page["first_id"] == page["data"][0]["id"]
    after = page["last_id"]
    rest = app.http.get(f"/v1/responses/{rid}/input_items?after={after}&order=asc").json()
    assert [i["content"][0]["text"] for i in rest["data"]] == ["m3", "m4", "m5", "m6"]
    assert not rest["has_more"]
    newest = app.http.get(f"/v1/responses/{rid}/input_items?limit=1").json()
    assert newest["data"][0]["content"][0]["text"] == "m6"
    assert_envelope(app.http.get(f"/v1/responses/{rid}/input_items?limit=101"), 400)


def test_a_chain_longer_than_allowed_is_400(app):
    rid = None
    for i in range(6):  # max_chain is 5: the sixth still continues five
        rid = app.post(input=f"m{i}", previous_response_id=rid).json()["id"]
    error = assert_envelope(app.post(input="more", previous_response_id=rid), 400)
    assert error["param"] == "previous_response_id"


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"background": True, "store": False}, "store"),
        ({"conversation": "conv_1", "previous_response_id": "resp_1"}, "conversation"),
        ({"tools": [{"type": "web_search"}]}, "tools[0]"),
        ({"tools": [TOOL], "tool_choice": {"type": "function", "name": "nope"}}, "tool_choice"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"reasoning": {"summary": "auto"}}, "reasoning.summary"),
        ({"include": ["reasoning.encrypted_content"]}, "include"),
        ({"include": ["file_search_call.results"]}, "include"),
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"text": {"verbosity": "high"}}, "text.verbosity"),
        ({"prompt": {"id": "pmpt_1"}}, "prompt"),
        ({"stream_options": {"include_obfuscation": False}}, "stream_options"),
        ({"temperature": 3}, "temperature"),
        ({"max_output_tokens": 0}, "max_output_tokens"),
        ({"frobnicate": 1}, "frobnicate"),
        ({"input": []}, "input"),
        ({"input": [{"type": "message", "role": "user",
                     "content": [{"type": "input_image", "image_url": "http://x"}]}]},
         "input[0].content[0]"),
        ({"input": [{"role": "user", "content": "x", "colour": "red"}]}, "input[0].colour"),
        ({"input": [{"role": "user", "content": f"m{i}"} for i in range(51)]}, "input"),
        ({"reasoning": {"effort": "low"}, "model": "plain"}, "reasoning.effort"),
        ({"tools": [TOOL], "model": "plain"}, "tools"),
        ({"model": "stt"}, "model"),
    ],
)  # fmt: skip
def test_what_we_cannot_do_is_refused_naming_the_field(app, fields, param):
    body = {"input": "x", **fields}
    error = assert_envelope(app.post(**body), 400 if fields.get("model") != "nope" else 404)
    assert error["param"] == param, error
    assert not app.llm.calls


def test_every_openai_request_field_is_handled():
    schemas = _document()["components"]["schemas"]
    fields: set[str] = set()

    def walk(node):
        if "$ref" in node:
            walk(schemas[node["$ref"].split("/")[-1]])
        for sub in node.get("allOf", []):
            walk(sub)
        fields.update(node.get("properties", {}))

    walk(schemas["CreateResponse"])
    assert fields <= set(ResponseRequest.model_fields)


def test_items_become_chat_messages():
    items = [
        {"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "d"}]},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "a"},
                                                         {"type": "input_text", "text": "b"}]},
        {"type": "reasoning", "summary": [], "content": [{"type": "reasoning_text", "text": "r"}]},
        {"type": "message", "role": "assistant",
         "content": [{"type": "output_text", "text": "t", "annotations": []}]},
        {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
        {"type": "function_call", "call_id": "c2", "name": "g", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c1", "output": "1"},
        {"type": "function_call_output", "call_id": "c2",
         "output": [{"type": "input_text", "text": "2"}]},
        {"type": "reasoning", "summary": [], "content": [{"type": "reasoning_text", "text": "x"}]},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "u"}]},
    ]  # fmt: skip
    assert to_messages(items) == [
        {"role": "developer", "content": "d"},
        {"role": "user", "content": "ab"},
        {"role": "assistant", "reasoning": "r", "content": "t", "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}},
            {"id": "c2", "type": "function", "function": {"name": "g", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "1"},
        {"role": "tool", "tool_call_id": "c2", "content": "2"},
        {"role": "user", "content": "u"},  # reasoning with no answer after it is dropped
    ]  # fmt: skip


def test_records_name_the_route_template_and_carry_usage(app):
    class Seen:
        records = []

        def admitted(self, record):
            pass

        def finished(self, record):
            self.records.append(record)

    seen = Seen()
    app.http.app.state.observers.append(seen)
    rid = app.post(input="x").json()["id"]
    app.http.get(f"/v1/responses/{rid}")
    app.http.get(f"/v1/responses/{rid}/input_items")
    app.http.get("/v1/responses/nope")
    routes = [(r.route, r.status) for r in seen.records]
    assert routes == [
        ("/v1/responses", 200),
        ("/v1/responses/{response_id}", 200),
        ("/v1/responses/{response_id}/input_items", 200),
        ("/v1/responses/{response_id}", 404),
    ]
    assert seen.records[0].model == MODEL and seen.records[0].usage["prompt_tokens"] == 7.0


def test_conversations_crud_and_items(app):
    client = app.sdk()
    conv = client.conversations.create(
        items=[{"role": "user", "content": "first"}], metadata={"topic": "demo"}
    )
    assert conv.id.startswith("conv_") and conv.metadata == {"topic": "demo"}
    validate(app.http.get(f"/v1/conversations/{conv.id}").json(), "ConversationResource")
    added = client.conversations.items.create(
        conv.id, items=[{"type": "message", "role": "assistant", "content": "reply"},
                        {"role": "user", "content": "second"}],
    )  # fmt: skip
    assert [i.role for i in added.data] == ["assistant", "user"]
    listed = app.http.get(f"/v1/conversations/{conv.id}/items?order=asc").json()
    validate(listed, "ConversationItemList")
    assert [i["content"][0]["text"] for i in listed["data"]] == ["first", "reply", "second"]
    item = client.conversations.items.retrieve(added.data[0].id, conversation_id=conv.id)
    assert item.content[0].text == "reply"
    after = client.conversations.items.delete(added.data[0].id, conversation_id=conv.id)
    assert after.id == conv.id
    with pytest.raises(openai.NotFoundError):
        client.conversations.items.retrieve(added.data[0].id, conversation_id=conv.id)
    updated = client.conversations.update(conv.id, metadata={"topic": "other"})
    assert updated.metadata == {"topic": "other"}
    deleted = app.http.delete(f"/v1/conversations/{conv.id}").json()
    validate(deleted, "DeletedConversationResource")
    with pytest.raises(openai.NotFoundError):
        client.conversations.retrieve(conv.id)
    with pytest.raises(openai.NotFoundError):
        client.conversations.items.list(conv.id)


def test_a_response_in_a_conversation_continues_it_and_is_added_to_it(app):
    client = app.sdk()
    conv = client.conversations.create(items=[{"role": "user", "content": "Hi"}])
    app.llm.frames = text_frames("Hello!", reasoning=("greet",))
    response = client.responses.create(
        model=MODEL, input="How are you?", conversation=conv.id, reasoning={"effort": "low"}
    )
    assert response.conversation.id == conv.id
    assert app.sent()["messages"] == [
        {"role": "user", "content": "Hi"}, {"role": "user", "content": "How are you?"}
    ]  # fmt: skip
    items = client.conversations.items.list(conv.id, order="asc").data
    assert [i.type for i in items] == ["message", "message", "reasoning", "message"]
    app.llm.frames = text_frames("Fine.")
    client.responses.create(model=MODEL, input="Good.", conversation={"id": conv.id})
    assert app.sent()["messages"][-3:] == [
        {"role": "user", "content": "How are you?"},
        {"role": "assistant", "reasoning": "greet", "content": "Hello!"},
        {"role": "user", "content": "Good."},
    ]
    assert len(client.conversations.items.list(conv.id).data) == 6
    error = assert_envelope(app.post(input="x", conversation="conv_nope"), 404, "not_found")
    assert error["param"] == "conversation"


def test_conversations_belong_to_their_key(tmp_path):
    keys = [APIKey(name="alice", secret="a-secret"), APIKey(name="bob", secret="b-secret")]
    app = App(tmp_path, keys)
    conv = app.sdk("a-secret").conversations.create()
    bob = app.sdk("b-secret")
    for call in (
        lambda: bob.conversations.retrieve(conv.id),
        lambda: bob.conversations.update(conv.id, metadata={}),
        lambda: bob.conversations.delete(conv.id),
        lambda: bob.conversations.items.list(conv.id),
        lambda: bob.conversations.items.create(conv.id, items=[{"role": "user", "content": "x"}]),
        lambda: bob.responses.create(model=MODEL, input="x", conversation=conv.id),
    ):
        with pytest.raises(openai.NotFoundError):
            call()
    assert app.sdk("a-secret").conversations.items.list(conv.id).data == []


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"items": [{"role": "user", "content": "x"}] * 21}, "items"),
        ({"items": [{"type": "message", "role": "user",
                     "content": [{"type": "input_file", "file_id": "f"}]}]}, "items[0].content[0]"),
        ({"metadata": {"k": 1}}, "metadata.k"),
        ({"colour": "red"}, "colour"),
    ],
)  # fmt: skip
def test_bad_conversation_bodies_are_400(app, body, param):
    error = assert_envelope(app.http.post("/v1/conversations", json=body), 400)
    assert error["param"] == param


class SlowStream:
    """A chat stream that yields a word every 20 ms until cancelled."""

    def __init__(self):
        self.cancelled = False
        self.sent = 0

    def __aiter__(self):
        return self

    async def __anext__(self):
        await asyncio.sleep(0.02)
        if self.cancelled:
            raise StopAsyncIteration
        self.sent += 1
        return chunk({"content": "word "})

    def cancel(self):
        self.cancelled = True


def wait_for(predicate, what, deadline_s=10.0):
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if result := predicate():
            return result
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_a_background_response_answers_queued_then_completes_and_replays(app):
    client = app.sdk()
    queued = client.responses.create(model=MODEL, input="x", background=True)
    assert queued.status == "queued" and queued.background
    done = wait_for(lambda: (r := client.responses.retrieve(queued.id)).status == "completed"
                    and r, "completion")  # fmt: skip
    assert done.output_text == "Hello there" and done.usage.output_tokens == 5
    events = list(client.responses.retrieve(queued.id, stream=True))
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert events[0].type == "response.created" and events[0].response.status == "queued"
    assert events[-1].type == "response.completed"
    tail = list(client.responses.retrieve(queued.id, stream=True, starting_after=3))
    assert [e.sequence_number for e in tail] == list(range(4, len(events)))
    raw = app.http.get(f"/v1/responses/{queued.id}?stream=true")
    for block in raw.text.strip().split("\n\n"):
        event = json.loads(block.split("\n")[1].removeprefix("data: "))
        validate(event, EVENT_SCHEMAS[event["type"]])


def test_a_streamed_background_response_can_be_followed_from_any_point(app):
    client = app.sdk()
    events = list(client.responses.create(model=MODEL, input="x", background=True, stream=True))
    assert events[-1].type == "response.completed"
    again = list(client.responses.retrieve(events[0].response.id, stream=True, starting_after=2))
    assert [e.model_dump() for e in again] == [e.model_dump() for e in events[3:]]


class SlowHandle:
    """A model handle whose every call is the same ``SlowStream``."""

    def __init__(self, stream):
        self.stream = stream
        self.generate = self
        self.calls = []

    def options(self, **_):
        return self

    def remote(self, *args):
        self.calls.append(("generate", args))
        return self.stream


def test_cancel_stops_the_engine_work_and_ends_cancelled(tmp_path):
    slow = SlowStream()
    app = App(tmp_path, llm=SlowHandle(slow))
    with app.http:
        client = app.sdk()
        queued = client.responses.create(model=MODEL, input="x", background=True)
        wait_for(lambda: slow.sent >= 5, "output under way")
        cancelled = client.responses.cancel(queued.id)
        assert cancelled.status == "cancelled" and slow.cancelled
        assert cancelled.output[0].content[0].text.startswith("word word")
        sent = slow.sent
        time.sleep(0.2)
        assert slow.sent == sent  # the engine work stopped
        assert client.responses.retrieve(queued.id).status == "cancelled"
        assert client.responses.cancel(queued.id).status == "cancelled"  # as it is


def test_background_needs_store_and_only_background_streams_again(app):
    error = assert_envelope(app.post(input="x", background=True, store=False), 400)
    assert error["param"] == "store"
    rid = app.post(input="x").json()["id"]
    assert assert_envelope(app.http.get(f"/v1/responses/{rid}?stream=true"), 400)["param"] == (
        "stream"
    )
    assert_envelope(app.http.post(f"/v1/responses/{rid}/cancel"), 400)
    assert_envelope(app.http.get(f"/v1/responses/{rid}?starting_after=2"), 400)


def test_a_background_response_whose_runner_died_ends_failed(app):
    """Its lease runs out: the next read ends it failed, and a follower gets
    response.failed."""
    response = {
        "id": "resp_dead",
        "object": "response",
        "created_at": int(time.time()),
        "status": "in_progress",
        "background": True,
        "output": [],
        "error": None,
    }
    created = {"type": "response.created", "sequence_number": 0, "response": response}
    asyncio.run(app.store.put_response("", response, [], [created], int(time.time()) - 1))
    events = [
        json.loads(b.split("\n")[1][6:])
        for b in app.http.get("/v1/responses/resp_dead?stream=true").text.strip().split("\n\n")
    ]
    assert [e["type"] for e in events] == ["response.created", "response.failed"]
    assert events[-1]["response"]["error"]["code"] == "server_error"
    assert app.http.get("/v1/responses/resp_dead").json()["status"] == "failed"


class ContextLimited(FakeHandle):
    """A model that refuses, as vLLM does, a prompt of more than ``limit`` messages."""

    def __init__(self, limit):
        super().__init__(text_frames("ok"))
        self.limit = limit

    def __getattr__(self, name):
        method = super().__getattr__(name)
        outer = self

        class Checked:
            def remote(self, endpoint, payload, rid):
                if len(payload["messages"]) > outer.limit:
                    outer.calls.append((name, (endpoint, payload, rid)))
                    from tests.unit.fakes import FakeStream

                    message = "This model's maximum context length is 2048 tokens."
                    return FakeStream([ErrorFrame(400, message, param="input_tokens")])
                return method.remote(endpoint, payload, rid)

        return Checked()


def test_truncation_auto_drops_the_oldest_turns_until_it_fits(tmp_path):
    app = App(tmp_path, llm=ContextLimited(limit=7))
    with app.http:
        rid = None
        for turn in range(3):  # 6 messages of history
            rid = app.post(input=f"t{turn}", previous_response_id=rid).json()["id"]
        error = assert_envelope(
            app.post(input="next", previous_response_id=rid, instructions="Be brief."), 400
        )
        assert error["param"] == "input"  # truncation disabled (the default): refused
        app.llm.calls.clear()
        auto = app.post(input="next", previous_response_id=rid, instructions="Be brief.",
                        truncation="auto").json()  # fmt: skip
        assert auto["status"] == "completed" and auto["truncation"] == "auto"
        tries = [len(call[1][1]["messages"]) for call in app.llm.calls]
        assert tries == [8, 6]  # 1 history message dropped, and the cut moved to a user turn
        sent = app.sent()["messages"]
        assert sent[0] == {"role": "system", "content": "Be brief."}
        assert sent[1] == {"role": "user", "content": "t1"} and sent[-1]["content"] == "next"


def test_logprobs_and_metadata_when_asked(app):
    top = [{"token": "Hi", "logprob": -0.1, "bytes": [72, 105], "top_logprobs": []}]
    app.llm.frames = [chunk({"content": "Hi"}, logprobs=top), chunk(finish="stop"),
                      chunk(usage=USAGE)]  # fmt: skip
    body = app.post(input="x", include=["message.output_text.logprobs"], top_logprobs=2,
                    metadata={"run": "7"}, parallel_tool_calls=False).json()  # fmt: skip
    assert body["output"][0]["content"][0]["logprobs"] == top
    assert body["metadata"] == {"run": "7"} and body["parallel_tool_calls"] is False
    assert app.sent()["logprobs"] is True and app.sent()["top_logprobs"] == 2
    assert app.sent()["parallel_tool_calls"] is False
    validate(body, "Response")


def test_named_tool_choice_and_llama_cpp_samplers_reach_the_engine_as_in_chat(app):
    app.llm.frames = call_frames()
    body = app.post(
        input="Weather?", tools=[TOOL], tool_choice={"type": "function", "name": "get_weather"},
        top_k=40, min_p=0.05, repeat_penalty=1.1, dry_multiplier=0.8, seed=7, temperature=0.3,
    ).json()  # fmt: skip
    assert body["tool_choice"] == {"type": "function", "name": "get_weather"}
    assert body["output"][0]["type"] == "function_call" and body["temperature"] == 0.3
    sent = app.sent()
    assert sent["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert sent["top_k"] == 40 and sent["min_p"] == 0.05 and sent["seed"] == 7
    assert sent["vllm_xargs"]["dry_multiplier"] == 0.8  # as chat sends llama.cpp's samplers
    assert "repeat_penalty" in json.dumps(sent["vllm_xargs"])
