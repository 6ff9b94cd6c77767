"""Conversations and background responses on a fake chat backend and a real SQLite store,
driven by the official SDK (the ingress and store of ``test_responses.py``)."""

import asyncio
import json
import time

import openai
import pytest

from serve_app.auth import APIKey
from tests.openai_schema import validate
from tests.unit.responses_app import EVENT_SCHEMAS, MODEL, App, chunk, text_frames
from tests.unit.test_ingress import assert_envelope


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

    def remote(self, *args, **_):  # an LLM call also passes its `caller`
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
