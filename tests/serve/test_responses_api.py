"""End to end through the official SDK: the Responses API on the real engine and on the
loopback gateway, stored in the session's real SQLite store (one replica, shared by both
ingress replicas)."""

import concurrent.futures
import json
import os
import signal
import threading
from pathlib import Path

import httpx
import openai
import pytest
from openai import OpenAI

from tests.openai_schema import validate
from tests.serve.conftest import OTHER_KEY, model_handle
from tests.waiting import wait_until

pytestmark = pytest.mark.serve

LOCAL, GATEWAY = "smollm2-135m-instruct", "gpt-4o-mini"
RUNNING = ("queued", "in_progress")
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city.",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
    "strict": True,
}


@pytest.mark.parametrize("model", [LOCAL, GATEWAY])
def test_create_stream_retrieve_chain_delete(client: OpenAI, http: httpx.Client, model: str):
    first = client.responses.create(
        model=model, input="Name a colour.", max_output_tokens=16, temperature=0
    )
    assert first.status in ("completed", "incomplete") and first.output_text.strip()
    validate(http.get(f"/v1/responses/{first.id}").json(), "Response")
    # the same request answers the same through the stream helper, and is stored as streamed
    with client.responses.stream(
        model=model, input="Name a colour.", max_output_tokens=16, temperature=0
    ) as stream:
        events = list(stream)
    assert [e.sequence_number for e in events] == list(range(len(events)))
    # the SDK's get_final_response() wants response.completed; incomplete ends otherwise
    assert events[-1].type == f"response.{first.status}"
    streamed = events[-1].response
    assert streamed.output_text == first.output_text
    stored = client.responses.retrieve(streamed.id)
    assert stored.output_text == streamed.output_text and stored.usage == streamed.usage
    # a chain carries the history: the second turn's prompt holds the first turn
    second = client.responses.create(
        model=model, input="And another?", previous_response_id=first.id,
        max_output_tokens=16, temperature=0,
    )  # fmt: skip
    alone = client.responses.create(
        model=model, input="And another?", max_output_tokens=16, temperature=0, store=False
    )
    # (each prompt has the template's system turn once)
    assert second.usage.input_tokens > alone.usage.input_tokens + first.usage.output_tokens
    items = client.responses.input_items.list(second.id)
    assert [i.content[0].text for i in items.data] == ["And another?"]
    client.responses.delete(second.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(second.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(alone.id)  # store=False


@pytest.mark.parametrize("model", [LOCAL, GATEWAY])
def test_a_function_call_round_trip(client: OpenAI, model: str):
    with client.responses.stream(
        model=model, input="What is the weather in Oslo?", tools=[WEATHER],
        tool_choice="required", max_output_tokens=64, temperature=0,
    ) as stream:  # fmt: skip
        kinds = [e.type for e in stream]
        first = stream.get_final_response()
    assert "response.function_call_arguments.delta" in kinds
    calls = [o for o in first.output if o.type == "function_call"]
    assert calls and calls[0].name == "get_weather"
    assert set(json.loads(calls[0].arguments)) == {"city"}  # constrained to the schema
    second = client.responses.create(
        model=model, previous_response_id=first.id, tools=[WEATHER], max_output_tokens=24,
        input=[{"type": "function_call_output", "call_id": calls[0].call_id,
                "output": '{"sky": "clear", "celsius": 21}'}],
        temperature=0,
    )  # fmt: skip
    assert second.status in ("completed", "incomplete") and second.output
    # the call and its output are in the history the model saw
    assert second.usage.input_tokens > first.usage.input_tokens + first.usage.output_tokens


def test_reasoning_comes_as_a_reasoning_item(client: OpenAI):
    response = client.responses.create(
        model=LOCAL, input="What is 2+2?", reasoning={"effort": "low"}, max_output_tokens=16,
        temperature=0,
    )  # fmt: skip
    assert response.output[0].type == "reasoning", response
    assert response.output[0].content[0].text.strip()
    details = response.usage.output_tokens_details
    assert 0 < details.reasoning_tokens <= response.usage.output_tokens
    chained = client.responses.create(
        model=LOCAL, input="Thanks.", previous_response_id=response.id, max_output_tokens=4
    )
    assert chained.status in ("completed", "incomplete")


def test_max_output_tokens_ends_incomplete(client: OpenAI):
    response = client.responses.create(
        model=LOCAL, input="Count from 1 to 100.", max_output_tokens=5, temperature=0
    )
    assert response.status == "incomplete", response
    assert response.incomplete_details.reason == "max_output_tokens"
    assert response.usage.output_tokens == 5
    with client.responses.stream(
        model=LOCAL, input="Count from 1 to 100.", max_output_tokens=5, temperature=0
    ) as stream:
        last = list(stream)[-1]
    assert last.type == "response.incomplete" and last.response.output_text == response.output_text


def test_a_history_too_long_is_400_or_truncated_as_asked(client: OpenAI):
    first = client.responses.create(model=LOCAL, input="word " * 1500, max_output_tokens=4)
    second = client.responses.create(
        model=LOCAL, input="Hello.", previous_response_id=first.id, max_output_tokens=4
    )
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(
            model=LOCAL, input="word " * 600, previous_response_id=second.id, max_output_tokens=4
        )
    error = caught.value.body
    assert error["param"] == "input" and "context length" in error["message"]
    auto = client.responses.create(
        model=LOCAL, input="word " * 600, previous_response_id=second.id, max_output_tokens=4,
        truncation="auto",
    )  # fmt: skip
    # the first turn went; the second turn and this input fit
    assert auto.status in ("completed", "incomplete") and auto.truncation == "auto"
    assert 600 < auto.usage.input_tokens < 1500


def test_json_schema_output(client: OpenAI):
    schema = {
        "type": "object",
        "properties": {"answer": {"type": "integer"}},
        "required": ["answer"],
        "additionalProperties": False,
    }
    response = client.responses.create(
        model=LOCAL, input="What is 2+3? Answer in JSON.", max_output_tokens=32, temperature=0,
        text={"format": {"type": "json_schema", "name": "sum", "schema": schema, "strict": True}},
    )  # fmt: skip
    assert set(json.loads(response.output_text)) == {"answer"}


def test_stored_responses_are_per_key(client: OpenAI, base_url: str):
    mine = client.responses.create(model=LOCAL, input="Hi", max_output_tokens=4)
    other = OpenAI(base_url=f"{base_url}/v1", api_key=OTHER_KEY, max_retries=0)
    with pytest.raises(openai.NotFoundError):
        other.responses.retrieve(mine.id)
    with pytest.raises(openai.NotFoundError):
        other.responses.create(
            model=LOCAL, input="Hi", previous_response_id=mine.id, max_output_tokens=4
        )
    with pytest.raises(openai.PermissionDeniedError):
        scoped = OpenAI(base_url=f"{base_url}/v1", api_key="chat-only-secret", max_retries=0)
        scoped.responses.create(model=LOCAL, input="Hi", max_output_tokens=4)


def test_chains_work_across_ingress_replicas(base_url: str, client: OpenAI):
    """The session runs two ingress replicas; fresh connections land on either, and every
    turn of a chain finds the one before it."""
    previous = None
    for turn in range(6):
        with OpenAI(base_url=f"{base_url}/v1", api_key=client.api_key, max_retries=0) as fresh:
            response = fresh.responses.create(
                model=LOCAL, input=f"Turn {turn}.", previous_response_id=previous,
                max_output_tokens=4,
            )  # fmt: skip
        previous = response.id
    items = client.responses.input_items.list(previous)
    assert [i.content[0].text for i in items.data] == ["Turn 5."]


def test_the_readme_example_runs_verbatim(base_url: str, client: OpenAI, capsys):
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("\n### Responses\n", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    code = code.replace("http://127.0.0.1:8000/v1", f"{base_url}/v1")
    code = code.replace('"unused-when-no-keys-set"', repr(client.api_key))
    exec(compile(code, "README.md", "exec"), {})
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].strip() and printed[-1] == "['message']"


@pytest.mark.parametrize("model", [LOCAL, GATEWAY])
def test_a_conversation_carries_its_items(client: OpenAI, model: str):
    conv = client.conversations.create(
        items=[{"role": "user", "content": "My name is Ada."}], metadata={"case": model}
    )
    first = client.responses.create(
        model=model, conversation=conv.id, input="What is my name?", max_output_tokens=8,
        temperature=0,
    )  # fmt: skip
    assert first.conversation.id == conv.id
    items = client.conversations.items.list(conv.id, order="asc").data
    texts = [part.text for item in items for part in item.content]
    assert texts[:2] == ["My name is Ada.", "What is my name?"]
    assert texts[2] == first.output_text and len(items) == 3
    second = client.responses.create(
        model=model, conversation={"id": conv.id}, input="Thanks.", max_output_tokens=4
    )
    # the whole conversation went into the second prompt
    assert second.usage.input_tokens > first.usage.input_tokens + first.usage.output_tokens
    assert len(client.conversations.items.list(conv.id).data) == 5
    client.conversations.delete(conv.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model=model, conversation=conv.id, input="Hi")


def test_killing_the_store_loses_no_completed_response(client: OpenAI, base_url: str):
    """kill -9 of the store replica while responses are being made: every response that the
    client saw complete is still there once Serve has replaced the replica."""
    from tests.serve.replicas import replica_pids

    (pid,) = replica_pids("response-store")
    completed: list[str] = []
    stop = threading.Event()

    def work() -> None:
        with OpenAI(base_url=f"{base_url}/v1", api_key=client.api_key, max_retries=0) as own:
            while not stop.is_set():
                try:
                    with own.responses.stream(
                        model=LOCAL, input="Hi", max_output_tokens=2
                    ) as stream:
                        last = list(stream)[-1]
                except openai.APIError:
                    continue  # the store was down: refused, never reported complete
                if last.type in ("response.completed", "response.incomplete"):
                    completed.append(last.response.id)

    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        workers = [pool.submit(work) for _ in range(3)]
        wait_until(lambda: len(completed) >= 6, 60, "responses before the kill")
        os.kill(pid, signal.SIGKILL)
        before = len(completed)
        wait_until(lambda: replica_pids("response-store") not in ([], [pid]), 60, "new store")
        wait_until(lambda: len(completed) >= before + 6, 60, "responses after the kill")
        stop.set()
        for worker in workers:
            worker.result(timeout=60)
    for response_id in completed:
        assert client.responses.retrieve(response_id).id == response_id


@pytest.mark.parametrize("model", [LOCAL, GATEWAY])
def test_background_poll_replay_and_cancel_from_any_replica(
    client: OpenAI, base_url: str, model: str
):
    def fresh() -> OpenAI:  # a new connection: either ingress replica may answer
        return OpenAI(base_url=f"{base_url}/v1", api_key=client.api_key, max_retries=0)

    queued = client.responses.create(
        model=model, input="Name a colour.", background=True, max_output_tokens=8,
        temperature=0,
    )  # fmt: skip
    assert queued.status == "queued"
    done = wait_until(
        lambda: (r := fresh().responses.retrieve(queued.id)).status not in RUNNING and r,
        60, "the background response to end",
    )  # fmt: skip
    assert done.status in ("completed", "incomplete") and done.output_text
    events = list(fresh().responses.retrieve(queued.id, stream=True, starting_after=1))
    assert events[0].sequence_number == 2 and events[-1].response.status == done.status
    # a long one (SmolLM2 often reasons until the limit), cancelled from another connection;
    # sampled, it sometimes answers in a few tokens and ends before the cancel: try another
    for _ in range(3):
        long = client.responses.create(
            model=model, input="Why is the sky blue?", background=True, max_output_tokens=1500,
            reasoning={"effort": "low"},
        )  # fmt: skip
        started = lambda rid=long.id: fresh().responses.retrieve(rid).status != "queued"  # noqa: E731
        wait_until(started, 60, "start")
        cancelled = fresh().responses.cancel(long.id)
        if cancelled.status != "completed":
            break
    assert cancelled.status == "cancelled"
    assert cancelled.output[0].content[0].text  # what it had made when cancelled
    # the engine stopped: nothing is left running on the LLM replica
    llm = model_handle(f"llm-{LOCAL}")
    wait_until(lambda: llm.num_unfinished_requests.remote().result() == 0, 10, "engine abort")


def test_a_background_response_ends_failed_when_its_replica_dies(client: OpenAI, http):
    """Kill every ingress replica while one runs a background response: once Serve has
    replaced them, the response's lease runs out and it ends failed, not in_progress."""
    from tests.serve.replicas import replica_pids

    long = client.responses.create(
        model=LOCAL, input="Why is the sky blue?", background=True, max_output_tokens=1500,
        reasoning={"effort": "low"},
    )  # fmt: skip
    wait_until(lambda: client.responses.retrieve(long.id).status == "in_progress", 60, "start")
    for pid in replica_pids("ingress"):
        os.kill(pid, signal.SIGKILL)
    wait_until(lambda: http.get("/health").status_code == 200, 90, "ingress replicas back")
    failed = wait_until(
        lambda: (r := client.responses.retrieve(long.id)).status == "failed" and r,
        60, "the lease to run out",
    )  # fmt: skip
    assert failed.error.code == "server_error"
    events = list(client.responses.retrieve(long.id, stream=True))
    assert events[0].type == "response.created" and events[-1].type == "response.failed"
    llm = model_handle(f"llm-{LOCAL}")
    wait_until(lambda: llm.num_unfinished_requests.remote().result() == 0, 90, "engine idle")
