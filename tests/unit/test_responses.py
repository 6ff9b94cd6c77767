"""The Responses bridge and routes on a fake chat backend and a real SQLite store, driven by
the official SDK (its strict stream accumulator parses every stream)."""

import json

import openai
import pytest

from deployments.common.contracts import ErrorFrame
from serve_app.auth import APIKey
from serve_app.protocol.items import to_messages
from serve_app.protocol.responses import ResponseRequest
from tests.openai_schema import fields_of, validate
from tests.unit.fakes import FakeHandle
from tests.unit.responses_app import (
    EVENT_SCHEMAS,
    MODEL,
    TOOL,
    USAGE,
    App,
    call_frames,
    chunk,
    text_frames,
)
from tests.unit.test_ingress import assert_envelope


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
    assert fields_of("CreateResponse") <= set(ResponseRequest.model_fields)


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


class ContextLimited(FakeHandle):
    """A model that refuses, as vLLM does, a prompt of more than ``limit`` messages."""

    def __init__(self, limit):
        super().__init__(text_frames("ok"))
        self.limit = limit

    def __getattr__(self, name):
        method = super().__getattr__(name)
        outer = self

        class Checked:
            def remote(self, endpoint, payload, rid, **_):  # and its `caller`
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
