"""The upstream client on httpx's mock transport: every error mapping, retries only before the
first byte, secrets never echoed, the upstream request closed when the client goes away."""

import asyncio
import json
import logging
import time

import httpx
import pytest

from deployments.common.contracts import ChunkFrame, ErrorFrame, JSONFrame, UsageFrame
from deployments.common.usage import Account
from deployments.upstream.client import UpstreamClient
from deployments.upstream.deployment import UpstreamDeployment
from tests.unit.test_abort_charges import charged  # noqa: F401 - a fixture

SECRET = "sk-very-secret-0123456789"
MODELS = {"gpt-4o-mini": {"upstream_model": "real-model", "timeout_s": 0.5, "max_retries": 2}}
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
ANSWER = {
    "id": "x",
    "object": "chat.completion",
    "model": "real-model",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Paris"}}],
    "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
}


def client(handler, monkeypatch=None) -> UpstreamClient:
    if monkeypatch is not None:
        monkeypatch.setenv("PROVIDER_KEY", SECRET)
    settings = {"base_url": "http://upstream.test/v1", "api_key_env": "PROVIDER_KEY"}
    return UpstreamClient(
        "prov", settings, MODELS, transport=httpx.MockTransport(handler), backoff_s=0.001
    )


async def frames(upstream: UpstreamClient, body=CHAT) -> list:
    return [f async for f in upstream.generate("chat", body, "rid-1")]


def run(coro):
    return asyncio.run(coro)


def test_json_answer_is_passed_on_with_our_model_id(monkeypatch):
    seen = {}

    def handler(request: httpx.Request) -> httpx.Response:
        seen["body"] = json.loads(request.content)
        seen["auth"] = request.headers["authorization"]
        seen["path"] = request.url.path
        return httpx.Response(200, json=ANSWER)

    (frame,) = run(frames(client(handler, monkeypatch)))
    assert isinstance(frame, JSONFrame)
    assert frame.body["model"] == "gpt-4o-mini" and frame.usage == {
        "prompt_tokens": 3,
        "completion_tokens": 1,
    }
    assert seen["body"]["model"] == "real-model" and seen["path"] == "/v1/chat/completions"
    assert seen["auth"] == f"Bearer {SECRET}"


def sse(*events) -> bytes:
    return b"".join(f"data: {e}\n\n".encode() for e in events)


CHUNK = json.dumps({"model": "real-model", "choices": [{"index": 0, "delta": {"content": "P"}}]})
USAGE = json.dumps(
    {
        "model": "real-model",
        "choices": [],
        "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7},
    }
)


@pytest.mark.parametrize("wants_usage", [False, True])
def test_stream_passes_chunks_and_asks_for_usage(wants_usage):
    seen = {}

    def handler(request):
        seen["body"] = json.loads(request.content)
        return httpx.Response(200, content=sse(CHUNK, CHUNK, USAGE, "[DONE]"))

    body = {**CHAT, "stream": True}
    if wants_usage:
        body["stream_options"] = {"include_usage": True}
    got = run(frames(client(handler), body))
    assert seen["body"]["stream_options"] == {"include_usage": True}
    chunks = [f for f in got if isinstance(f, ChunkFrame)]
    assert len(chunks) == (3 if wants_usage else 2)
    assert json.loads(chunks[0].data)["model"] == "gpt-4o-mini"
    assert got[-1] == UsageFrame({"prompt_tokens": 5, "completion_tokens": 2})


@pytest.mark.parametrize("status", [400, 404, 409, 422])
def test_client_errors_keep_status_and_message(status):
    error = {"error": {"message": "bad temperature", "param": "temperature", "code": "x"}}
    (frame,) = run(frames(client(lambda r: httpx.Response(status, json=error))))
    assert isinstance(frame, ErrorFrame)
    assert (frame.status, frame.message, frame.param) == (status, "bad temperature", "temperature")


@pytest.mark.parametrize("status", [401, 403])
def test_refused_credentials_are_502_without_the_key(status, monkeypatch):
    body = {"error": {"message": f"Incorrect API key provided: {SECRET}"}}
    (frame,) = run(frames(client(lambda r: httpx.Response(status, json=body), monkeypatch)))
    assert frame.status == 502 and "refused our credentials" in frame.message
    assert SECRET not in frame.message


def test_secret_echoed_in_a_message_is_redacted(monkeypatch, caplog):
    body = {"error": {"message": f"model not found for key {SECRET}"}}
    with caplog.at_level(logging.DEBUG):
        (frame,) = run(frames(client(lambda r: httpx.Response(404, json=body), monkeypatch)))
    assert SECRET not in frame.message and "[redacted]" in frame.message
    assert SECRET not in caplog.text


def counting(responses):
    calls = []

    def handler(request):
        calls.append(request)
        item = responses[min(len(calls) - 1, len(responses) - 1)]
        if isinstance(item, Exception):
            raise item
        return item

    return handler, calls


def test_429_is_retried_then_passed_on_with_retry_after():
    handler, calls = counting([httpx.Response(429, headers={"retry-after": "0"}, json={})])
    (frame,) = run(frames(client(handler)))
    assert len(calls) == 3  # max_retries 2
    assert frame.status == 429 and frame.headers == {"Retry-After": "1"}


def test_503_then_success_is_retried():
    handler, calls = counting([httpx.Response(503), httpx.Response(200, json=ANSWER)])
    (frame,) = run(frames(client(handler)))
    assert len(calls) == 2 and isinstance(frame, JSONFrame)


def test_connection_errors_are_retried_then_502():
    handler, calls = counting([httpx.ConnectError("refused")])
    (frame,) = run(frames(client(handler)))
    assert len(calls) == 3 and frame.status == 502
    handler, calls = counting([httpx.ConnectError("refused"), httpx.Response(200, json=ANSWER)])
    assert isinstance(run(frames(client(handler)))[0], JSONFrame)


def test_server_errors_are_502_and_not_retried():
    handler, calls = counting([httpx.Response(500, text="<html>stack trace</html>")])
    (frame,) = run(frames(client(handler)))
    assert len(calls) == 1 and frame.status == 502 and "stack" not in frame.message


class StalledBody(httpx.AsyncByteStream):
    """Headers arrive, the body never does."""

    async def __aiter__(self):
        await asyncio.Event().wait()
        yield b""


def test_no_answer_in_time_is_504_timeout():
    """Headers that never come, or a body that never comes: 504 ``timeout`` after the
    model's ``timeout_s`` (0.5 s), however long the provider would have taken."""

    async def no_headers(request):
        await asyncio.Event().wait()

    for handler in (no_headers, lambda request: httpx.Response(200, stream=StalledBody())):
        (frame,) = run(frames(client(handler)))
        assert frame.status == 504 and frame.code == "timeout", frame


class BreakingStream(httpx.AsyncByteStream):
    """One chunk, then the connection breaks (or the consumer goes away)."""

    def __init__(self) -> None:
        self.closed = False

    async def __aiter__(self):
        yield sse(CHUNK)
        await asyncio.sleep(0.05)
        raise httpx.ReadError("connection reset")

    async def aclose(self) -> None:
        self.closed = True


def test_a_stream_broken_after_the_first_byte_is_not_retried():
    calls = []

    def handler(request):
        calls.append(request)
        return httpx.Response(200, stream=BreakingStream())

    got = run(frames(client(handler), {**CHAT, "stream": True}))
    assert len(calls) == 1
    assert isinstance(got[0], ChunkFrame) and got[-1].status == 502


def test_client_going_away_closes_the_upstream_request():
    stream = BreakingStream()

    async def scenario():
        upstream = client(lambda r: httpx.Response(200, stream=stream))
        generator = upstream.generate("chat", {**CHAT, "stream": True}, "rid")
        first = await anext(generator)
        await generator.aclose()  # what cancelling the Serve call does to the generator
        return first

    assert isinstance(run(scenario()), ChunkFrame)
    assert stream.closed


def test_ready_asks_models():
    def handler(request):
        return httpx.Response(200 if request.url.path == "/v1/models" else 404, json={})

    run(client(handler).ready())
    with pytest.raises(RuntimeError):
        run(client(lambda r: httpx.Response(500)).ready())


def test_retry_after_is_waited_before_the_retry():
    """A 503 asking for 0.3 s: the retry comes no sooner, though our own backoff is 1 ms."""
    stamps = []

    def handler(request):
        stamps.append(time.monotonic())
        if len(stamps) == 1:
            return httpx.Response(503, headers={"retry-after": "0.3"})
        return httpx.Response(200, json=ANSWER)

    (frame,) = run(frames(client(handler)))
    assert isinstance(frame, JSONFrame) and len(stamps) == 2
    assert stamps[1] - stamps[0] >= 0.3


def test_503_after_every_retry_is_502():
    handler, calls = counting([httpx.Response(503, text="busy")])
    (frame,) = run(frames(client(handler)))
    assert len(calls) == 3 and frame.status == 502 and frame.headers is None


def test_an_error_event_in_mid_stream_ends_it_with_502_and_its_message(monkeypatch):
    error = json.dumps({"error": {"message": f"engine overloaded for {SECRET}"}})
    answer = httpx.Response(200, content=sse(CHUNK, error, CHUNK, "[DONE]"))
    upstream = client(lambda r: answer, monkeypatch)
    got = run(frames(upstream, {**CHAT, "stream": True}))
    assert isinstance(got[0], ChunkFrame) and len(got) == 2  # nothing after the error
    assert got[1].status == 502 and "engine overloaded" in got[1].message
    assert SECRET not in got[1].message


def test_a_stream_whose_first_event_never_comes_is_504_timeout():
    upstream = client(lambda r: httpx.Response(200, stream=StalledBody()))
    (frame,) = run(frames(upstream, {**CHAT, "stream": True}))
    assert frame.status == 504 and frame.code == "timeout"


def test_a_provider_that_sends_no_usage_is_charged_an_estimate():
    """4 characters a token, of the text read and written, marked as an estimate."""
    prompt = {**CHAT, "messages": [{"role": "user", "content": "What is France's capital?"}]}
    unary = {k: v for k, v in ANSWER.items() if k != "usage"}
    (frame,) = run(frames(client(lambda r: httpx.Response(200, json=unary)), prompt))
    assert frame.estimated and frame.usage == {"prompt_tokens": 7, "completion_tokens": 2}
    streamed = sse(CHUNK, CHUNK, CHUNK, CHUNK, CHUNK, "[DONE]")
    got = run(
        frames(client(lambda r: httpx.Response(200, content=streamed)), {**prompt, "stream": True})
    )
    assert got[-1] == UsageFrame({"prompt_tokens": 7, "completion_tokens": 2}, estimated=True)


def test_usage_on_the_last_content_chunk_is_the_providers():
    last = json.dumps(
        {
            "choices": [{"index": 0, "delta": {"content": "P"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12},
        }
    )
    got = run(
        frames(
            client(lambda r: httpx.Response(200, content=sse(CHUNK, last, "[DONE]"))),
            {**CHAT, "stream": True},
        )
    )
    assert got[-1] == UsageFrame({"prompt_tokens": 9, "completion_tokens": 3})


def test_a_call_cut_short_charges_an_estimate_of_what_was_said(charged):  # noqa: F811
    deployment = object.__new__(UpstreamDeployment)
    deployment.client = client(lambda r: httpx.Response(200, stream=BreakingStream()))
    account = Account("k", "completions", "/v1/chat/completions", ("l", "a"), request_id="rid")

    async def scenario():
        generator = deployment.generate("chat", {**CHAT, "stream": True}, "rid", account)
        await anext(generator)
        await generator.aclose()  # the client went away
        await asyncio.sleep(0.01)  # the charge goes from a task of its own

    run(scenario())
    (charge,) = charged
    assert charge.estimated and charge.ended == "cancelled" and charge.id == "rid/cut"
    assert (charge.model, charge.input_tokens, charge.output_tokens) == ("gpt-4o-mini", 1, 1)
