"""The response store, one suite run against both backends: SQLite in a temp dir and a real
PostgreSQL server the session starts (``tests/postgres_server.py``)."""

import asyncio
import time
import uuid

from serve_app.store import TOO_LONG
from tests.unit.stores import run

DAY = 86400


def response(rid, previous=None, output_text="hi", created=None):
    return {
        "id": rid,
        "object": "response",
        "created_at": created or int(time.time()),
        "previous_response_id": previous,
        "status": "completed",
        "output": [
            {
                "id": f"msg_{rid}",
                "type": "message",
                "role": "assistant",
                "status": "completed",
                "content": [{"type": "output_text", "text": output_text, "annotations": []}],
            }
        ],
    }


def user(text, item_id=None):
    return {
        "id": item_id or f"msg_{uuid.uuid4().hex}",
        "type": "message",
        "role": "user",
        "status": "completed",
        "content": [{"type": "input_text", "text": text}],
    }


def test_a_stored_response_reads_back_for_its_owner_only(make_store):
    store = make_store()
    run(store.put_response("alice", response("resp_1"), [user("hello")]))
    assert run(store.get_response("alice", "resp_1"))["output"][0]["id"] == "msg_resp_1"
    assert run(store.get_response("bob", "resp_1")) is None
    assert run(store.input_items("bob", "resp_1")) is None
    assert run(store.history("bob", "resp_1", 10)) is None
    assert not run(store.delete_response("bob", "resp_1"))
    assert run(store.get_response("alice", "resp_1")) is not None


def test_history_walks_the_chain_oldest_first_with_every_item(make_store):
    store = make_store()
    call = {"id": "fc_1", "type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"}
    first = response("resp_1")
    first["output"].insert(
        0,
        {
            "id": "rs_1",
            "type": "reasoning",
            "summary": [],
            "content": [{"type": "reasoning_text", "text": "hmm"}],
        },
    )
    first["output"].append(call)
    run(store.put_response("alice", first, [user("one", "msg_a")]))
    output = {"id": "fco_1", "type": "function_call_output", "call_id": "c1", "output": "42"}
    run(store.put_response("alice", response("resp_2", "resp_1", "two"), [output, user("b")]))
    run(store.put_response("alice", response("resp_3", "resp_2", "three"), [user("c")]))
    items = run(store.history("alice", "resp_3", 10))
    kinds = [(i["type"], i.get("role")) for i in items]
    assert kinds == [
        ("message", "user"), ("reasoning", None), ("message", "assistant"),
        ("function_call", None), ("function_call_output", None), ("message", "user"),
        ("message", "assistant"), ("message", "user"), ("message", "assistant"),
    ]  # fmt: skip
    assert items[0]["id"] == "msg_a" and items[-1]["content"][0]["text"] == "three"
    assert [i["type"] for i in run(store.history("alice", "resp_2", 10))][-1] == "message"
    assert run(store.history("alice", "resp_3", 2)) == TOO_LONG
    assert len(run(store.history("alice", "resp_3", 3))) == len(items)


def test_a_deleted_response_is_gone_and_its_chain_starts_after_it(make_store):
    store = make_store()
    run(store.put_response("alice", response("resp_1"), [user("one")]))
    run(store.put_response("alice", response("resp_2", "resp_1"), [user("two")]))
    assert run(store.delete_response("alice", "resp_1"))
    assert run(store.get_response("alice", "resp_1")) is None
    assert run(store.input_items("alice", "resp_1")) is None
    assert not run(store.delete_response("alice", "resp_1"))
    items = run(store.history("alice", "resp_2", 10))
    assert [i["content"][0]["text"] for i in items] == ["two", "hi"]


def test_input_items_keep_their_order(make_store):
    store = make_store()
    items = [user(f"m{i}") for i in range(30)]
    run(store.put_response("alice", response("resp_1"), items))
    assert run(store.input_items("alice", "resp_1")) == items


def test_rewriting_a_response_replaces_it(make_store):
    store = make_store()
    first = response("resp_1")
    first["status"] = "in_progress"
    run(store.put_response("alice", first, [user("one")]))
    run(store.put_response("alice", response("resp_1", output_text="done"), [user("one")]))
    got = run(store.get_response("alice", "resp_1"))
    assert got["status"] == "completed" and got["output"][0]["content"][0]["text"] == "done"
    assert len(run(store.input_items("alice", "resp_1"))) == 1
    run(store.put_response("bob", response("resp_1", output_text="bob's"), []))  # not his
    assert run(store.get_response("alice", "resp_1"))["output"][0]["content"][0]["text"] == "done"
    assert run(store.get_response("bob", "resp_1")) is None


def test_retention_hides_then_cleanup_deletes(make_store):
    store = make_store(retention_s=DAY)
    old = int(time.time()) - 2 * DAY
    run(store.put_response("alice", response("resp_old", created=old), [user("old")]))
    run(store.put_response("alice", response("resp_new"), [user("new")]))
    assert run(store.get_response("alice", "resp_old")) is None  # expired, not yet deleted
    assert run(store.history("alice", "resp_old", 10)) is None
    assert run(store.cleanup()) == 1
    assert run(store.cleanup()) == 0
    assert run(store.get_response("alice", "resp_new")) is not None


def test_the_schema_survives_a_restart(make_store):
    store = make_store()
    run(store.put_response("alice", response("resp_1"), [user("one")]))
    run(store.close())
    again = make_store()  # same database, migrations already applied
    assert run(again.get_response("alice", "resp_1")) is not None


def test_concurrent_writes_all_land(make_store):
    store = make_store()

    async def many():
        await asyncio.gather(
            *(store.put_response("alice", response(f"resp_{i}"), [user(str(i))]) for i in range(50))
        )

    run(many())
    assert all(run(store.get_response("alice", f"resp_{i}")) for i in range(50))


def test_conversations_keep_items_in_order_per_owner(make_store):
    store = make_store()
    conv = {"id": "conv_1", "created_at": int(time.time()), "metadata": {"a": "b"}}
    run(store.create_conversation("alice", conv, [user("one", "msg_1")]))
    assert run(store.get_conversation("alice", "conv_1"))["metadata"] == {"a": "b"}
    assert run(store.get_conversation("bob", "conv_1")) is None
    assert run(store.add_items("alice", "conv_1", [user("two", "msg_2"), user("three", "msg_3")]))
    assert not run(store.add_items("bob", "conv_1", [user("evil", "msg_x")]))
    assert not run(store.add_items("alice", "conv_nope", [user("x", "msg_y")]))
    texts = [i["content"][0]["text"] for i in run(store.conversation_items("alice", "conv_1"))]
    assert texts == ["one", "two", "three"]
    assert run(store.conversation_items("bob", "conv_1")) is None
    assert run(store.get_item("alice", "conv_1", "msg_2"))["content"][0]["text"] == "two"
    assert run(store.get_item("bob", "conv_1", "msg_2")) is None
    assert not run(store.delete_item("bob", "conv_1", "msg_2"))
    assert run(store.delete_item("alice", "conv_1", "msg_2"))
    assert run(store.get_item("alice", "conv_1", "msg_2")) is None
    assert run(store.update_conversation("alice", "conv_1", {"c": "d"}))["metadata"] == {"c": "d"}
    assert run(store.update_conversation("bob", "conv_1", {})) is None
    assert not run(store.delete_conversation("bob", "conv_1"))
    assert run(store.delete_conversation("alice", "conv_1"))
    assert run(store.conversation_items("alice", "conv_1")) is None


def test_an_item_is_updated_only_where_it_is_as_it_was_read(make_store):
    """As the ingress keeps a transcript on an item: not another item with the same id (a
    client may give two items one id), not an item changed since, not another owner's."""
    store = make_store()
    conv = {"id": "conv_1", "created_at": int(time.time()), "metadata": {}}
    run(store.create_conversation("alice", conv, [user("one", "msg_1"), user("two", "msg_1")]))
    one, two = run(store.conversation_items("alice", "conv_1"))
    newer = {**one, "content": [{"type": "input_text", "text": "one", "kept": "1"}]}
    run(store.update_items("bob", "conv_1", [(one, newer)]))
    assert run(store.conversation_items("alice", "conv_1")) == [one, two]
    run(store.update_items("alice", "conv_1", [(one, newer)]))
    assert run(store.conversation_items("alice", "conv_1")) == [newer, two]
    run(store.update_items("alice", "conv_1", [(one, {**one, "status": "stale"})]))
    assert run(store.conversation_items("alice", "conv_1")) == [newer, two]


def test_concurrent_appends_to_one_conversation_all_land_in_order(make_store):
    store = make_store()
    conv = {"id": "conv_1", "created_at": int(time.time()), "metadata": {}}
    run(store.create_conversation("alice", conv, []))

    async def many():
        await asyncio.gather(
            *(store.add_items("alice", "conv_1", [user(f"{i}a"), user(f"{i}b")]) for i in range(20))
        )

    run(many())
    texts = [i["content"][0]["text"] for i in run(store.conversation_items("alice", "conv_1"))]
    assert len(texts) == 40
    for i in range(20):  # each call's two items are adjacent
        assert texts.index(f"{i}b") == texts.index(f"{i}a") + 1
