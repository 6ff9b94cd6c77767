"""The ingress of the Responses and Conversations unit tests: a fake chat backend (chat
chunks as the LLM replica sends them) and a real SQLite store, with an SDK client on it."""

import asyncio
import json

import openai
from fastapi.testclient import TestClient

from deployments.common.contracts import ChunkFrame, JSONFrame, UsageFrame
from serve_app.admission import RateLimits
from serve_app.auth import KeyStore
from serve_app.config import AppConfig
from serve_app.ingress import create_app
from serve_app.registry import ModelRegistry
from serve_app.settings import Settings
from serve_app.store.sqlite import SQLiteStore
from tests.unit.fakes import FakeHandle

MODEL = "smart"
USAGE = {"prompt_tokens": 7, "completion_tokens": 5, "total_tokens": 12}
TRANSCRIPT = "the quick brown fox"  # what the fake Whisper hears in any audio
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
    """The ingress on a fake LLM handle, a fake Whisper (every clip: TRANSCRIPT, 2 audio
    seconds) and a real SQLite store; ``sdk(key)`` an OpenAI client on it."""

    def __init__(self, tmp_path, keys=(), llm=None, limiter=None):
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
        self.whisper = FakeHandle([JSONFrame({"text": TRANSCRIPT}, {"audio_seconds": 2.0})])
        handles = {MODEL: self.llm, "plain": self.llm, "stt": self.whisper}
        registry = ModelRegistry(config, handles, 1, FakeHandle([]))
        self.store = SQLiteStore(str(tmp_path / "r.sqlite3"), 86400)
        asyncio.run(self.store.start())
        app = create_app(registry, Settings(), KeyStore(list(keys)), RateLimits(limiter),
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
