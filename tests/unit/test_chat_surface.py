"""The strict chat/completions surface on fake backends: every field works or gets a 400."""

import base64
import json

import pytest
from fastapi.testclient import TestClient

from deployments.common.contracts import ErrorFrame, JSONFrame
from serve_app.admission import RateLimits
from serve_app.auth import APIKey, KeyStore
from serve_app.config import AppConfig
from serve_app.ingress import create_app
from serve_app.protocol.openai import ChatCompletionRequest, CompletionRequest
from serve_app.registry import ModelRegistry
from serve_app.settings import Settings
from tests.openai_schema import fields_of
from tests.unit.fakes import FakeHandle, local_limiter
from tests.unit.test_ingress import assert_envelope

SMART = "smart"  # tools, reasoning, llama.cpp-like defaults
PLAIN = "plain"  # nothing configured
MSG = [{"role": "user", "content": "hi"}]
WAV64 = base64.b64encode(b"RIFF" + b"\x00" * 64).decode()
TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}


def make(whisper_frames=None, max_upload=1000, keys=(), limiter=None):
    config = AppConfig.model_validate(
        {
            "models": [
                {
                    "id": SMART,
                    "family": "llm",
                    "source": "x",
                    "engine": {
                        "tool_call_parser": "hermes",
                        "enable_auto_tool_choice": True,
                        "reasoning_parser": "think_tags",
                    },
                    "sampling_defaults": {"top_k": 40, "min_p": 0.05, "repeat_penalty": 1.1},
                    "audio_model": "stt",
                },
                {"id": PLAIN, "family": "llm", "source": "x"},
                {"id": "stt", "family": "whisper", "source": "y"},
            ],
            "audio": {"max_upload_bytes": max_upload},
        }
    )
    llm = FakeHandle([JSONFrame({"ok": True})])
    whisper = FakeHandle(
        whisper_frames or [JSONFrame({"text": "the quick brown fox"}, {"audio_seconds": 2.0})]
    )
    handles = {SMART: llm, PLAIN: llm, "stt": whisper}
    registry = ModelRegistry(config, handles, 1, FakeHandle([]))
    app = create_app(registry, Settings(), KeyStore(list(keys)), RateLimits(limiter))
    return TestClient(app, raise_server_exceptions=False), llm, whisper


def chat(client, headers=None, **fields):
    body = {"model": SMART, "messages": MSG, **fields}
    return client.post("/v1/chat/completions", json=body, headers=headers)


def sent(llm: FakeHandle) -> dict:
    return llm.calls[-1][1][1]


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"temperature": True}, "temperature"),
        ({"max_tokens": "10"}, "max_tokens"),
        ({"stream": "yes"}, "stream"),
        ({"logprobs": "yes"}, "logprobs"),
        ({"logit_bias": {"5": 1000}}, "logit_bias"),
        ({"logit_bias": {"five": 1}}, "logit_bias.five"),
        ({"messages": [{"role": "user"}]}, "messages[0].content"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].tool_call_id"),
        ({"messages": [{"role": "assistant"}]}, "messages[0].content"),
        ({"messages": [{"role": "function", "content": "x", "name": "f"}]}, "messages[0].role"),
        ({"repeat_penalty": 1.2, "repetition_penalty": 1.2}, "repeat_penalty"),
        ({"repeat_last_n": -2}, "repeat_last_n"),
        ({"dry_base": 0.5}, "dry_base"),
        ({"dry_sequence_breakers": []}, "dry_sequence_breakers"),
        ({"xtc_probability": 1.5}, "xtc_probability"),
        ({"enable_thinking": "yes"}, "enable_thinking"),
        ({"top_logprobs": 3}, "top_logprobs"),
        ({"stream_options": {"include_usage": True}}, "stream_options"),
        ({"tool_choice": "auto"}, "tool_choice"),
        (
            {"tools": [TOOL], "tool_choice": {"type": "function", "function": {"name": "x"}}},
            "tool_choice",
        ),  # noqa: E501
        ({"tools": [{"type": "custom", "custom": {"name": "c"}}]}, "tools[0]"),
        ({"audio": {"voice": "alloy", "format": "wav"}, "modalities": ["text", "audio"]}, "audio"),
        ({"modalities": ["audio"]}, "modalities"),
        ({"web_search_options": {}}, "web_search_options"),
        ({"functions": [{"name": "f"}]}, "functions"),
        ({"verbosity": "low"}, "verbosity"),
        ({"max_tokens": 5, "max_completion_tokens": 5}, "max_tokens"),
        ({"frobnicate": 1}, "frobnicate"),
    ],
)
def test_bad_chat_fields_are_400_naming_the_field(fields, param):
    client, llm, _ = make()
    error = assert_envelope(chat(client, **fields), 400)
    assert error["param"] == param
    assert error["type"] == "invalid_request_error"
    assert not llm.calls  # nothing reached the model


def test_unknown_field_message_is_openais():
    client, _, _ = make()
    error = assert_envelope(chat(client, frobnicate=1), 400)
    assert error["message"] == "Unrecognized request argument supplied: frobnicate"


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"echo": "yes"}, "echo"),
        ({"best_of": -1}, "best_of"),
        ({"best_of": 3}, "best_of"),
        ({"suffix": "end"}, "suffix"),
        ({"logprobs": 6}, "logprobs"),
        ({"prompt": {"a": 1}}, "prompt"),
    ],
)
def test_bad_completion_fields_are_400(fields, param):
    client, _, _ = make()
    body = {"model": SMART, "prompt": "x", **fields}
    assert assert_envelope(client.post("/v1/completions", json=body), 400)["param"] == param


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"reasoning_effort": "high"}, "reasoning_effort"),
        ({"enable_thinking": True}, "enable_thinking"),
        ({"tools": [TOOL], "tool_choice": "required"}, "tools"),
    ],
)
def test_what_a_model_is_not_configured_for_is_refused(fields, param):
    client, _, _ = make()
    body = {"model": PLAIN, "messages": MSG, **fields}
    error = assert_envelope(client.post("/v1/chat/completions", json=body), 400)
    assert error["param"] == param and PLAIN in error["message"]


def test_image_and_file_parts_are_refused_and_nothing_is_fetched():
    client, llm, _ = make()
    image = {"type": "image_url", "image_url": {"url": "http://192.0.2.1/cat.png"}}
    content = [{"type": "text", "text": "what is this"}, image]
    error = assert_envelope(chat(client, messages=[{"role": "user", "content": content}]), 400)
    assert error["param"] == "messages[0].content[1]" and error["code"] == "unsupported_content"
    assert not llm.calls


def test_advisory_fields_are_accepted_and_not_forwarded():
    client, llm, _ = make()
    advisory = {
        "user": "u1",
        "metadata": {"team": "a"},
        "store": False,
        "service_tier": "auto",
        "prompt_cache_key": "k",
        "safety_identifier": "s",
        "verbosity": "medium",
        "modalities": ["text"],
        "stream_options": None,
    }
    assert chat(client, **advisory).status_code == 200
    assert not set(advisory) & set(sent(llm))


def test_llama_cpp_samplers_map_to_vllm():
    client, llm, _ = make()
    chat(
        client,
        repeat_penalty=1.3,
        dry_multiplier=0.8,
        dry_sequence_breakers=["\n"],
        xtc_probability=0.5,
        xtc_threshold=0.2,
        top_k=5,
    )
    body = sent(llm)
    assert body["top_k"] == 5 and body["min_p"] == 0.05  # request wins, defaults fill in
    assert body["vllm_xargs"] == {
        "repeat_penalty": 1.3,
        "repeat_last_n": 64,
        "dry_multiplier": 0.8,
        "dry_sequence_breakers": ["\n"],
        "xtc_probability": 0.5,
        "xtc_threshold": 0.2,
    }


def test_repeat_last_n_edges():
    client, llm, _ = make()
    chat(client, repeat_penalty=1.3, repeat_last_n=-1)
    assert sent(llm)["repetition_penalty"] == 1.3 and "vllm_xargs" not in sent(llm)
    chat(client, repeat_penalty=1.3, repeat_last_n=0)
    assert "repetition_penalty" not in sent(llm) and "vllm_xargs" not in sent(llm)
    chat(client, repetition_penalty=1.2)  # vLLM's own replaces the default repeat_penalty
    assert sent(llm)["repetition_penalty"] == 1.2 and "vllm_xargs" not in sent(llm)


def test_plain_model_gets_openai_defaults():
    client, llm, _ = make()
    client.post("/v1/chat/completions", json={"model": PLAIN, "messages": MSG})
    assert sent(llm) == {"messages": MSG}


def test_thinking_flags_reach_the_template():
    client, llm, _ = make()
    chat(client, enable_thinking="false")
    assert sent(llm)["chat_template_kwargs"] == {"enable_thinking": False}
    chat(client, reasoning_effort="low")
    assert sent(llm)["reasoning_effort"] == "low"


def test_include_usage_alias_and_return_prompt():
    client, llm, _ = make()
    chat(client, stream=True, include_usage=True, return_prompt=True)
    assert sent(llm)["stream_options"] == {"include_usage": True}
    assert sent(llm)["return_prompt"] is True


def test_tools_default_to_auto():
    client, llm, _ = make()
    chat(client, tools=[TOOL])
    assert sent(llm)["tool_choice"] == "auto" and sent(llm)["tools"] == [TOOL]


def audio_message(data=WAV64, fmt="wav"):
    part = {"type": "input_audio", "input_audio": {"data": data, "format": fmt}}
    return [{"role": "user", "content": [{"type": "text", "text": "Answer:"}, part]}]


def test_input_audio_is_transcribed_into_the_prompt():
    client, llm, whisper = make()
    headers = {"x-request-id": "chat-with-audio"}
    assert chat(client, headers, messages=audio_message(), stream=True).status_code == 200
    content = sent(llm)["messages"][0]["content"]
    assert content == [
        {"type": "text", "text": "Answer:"},
        {"type": "text", "text": "the quick brown fox"},
    ]
    method, (decoded, params) = whisper.calls[0]
    assert method == "transcribe" and decoded[0] == "decoded"
    assert params["task"] == "transcribe" and params["response_format"] == "json"
    assert params["request_id"] == "chat-with-audio"  # the chat request's own


def test_input_audio_needs_room_in_the_keys_audio_budget(tmp_path):
    """As a transcription: a key whose audio seconds for the minute are spent gets 429 with
    Retry-After before any audio is decoded; text-only chat needs no audio budget."""
    key = APIKey(name="k", secret="s3cret", limits={"audio_seconds_per_minute": 3})
    client, llm, whisper = make(keys=[key], limiter=local_limiter(tmp_path))
    headers = {"Authorization": "Bearer s3cret"}
    for _ in range(2):  # 2 s of audio each: the second starts with 2 s of 3 spent
        assert chat(client, headers, messages=audio_message()).status_code == 200
    limited = chat(client, headers, messages=audio_message())
    assert_envelope(limited, 429, "rate_limit_exceeded")
    assert 1 <= int(limited.headers["retry-after"]) <= 60
    assert len(whisper.calls) == 2 and len(llm.calls) == 2
    assert chat(client, headers).status_code == 200


@pytest.mark.parametrize(
    ("data", "status"),
    [("not base64!!", 400), (base64.b64encode(b"x" * 2000).decode(), 413)],
)
def test_bad_or_large_audio_names_the_part(data, status):
    client, llm, whisper = make()
    error = assert_envelope(chat(client, messages=audio_message(data)), status)
    assert error["param"] == "messages[0].content[1].input_audio.data"
    assert not llm.calls and not whisper.calls


def test_undecodable_audio_is_400_naming_the_part():
    frames = [ErrorFrame(400, "Audio file could not be decoded.", param="file")]
    client, llm, _ = make(whisper_frames=frames)
    error = assert_envelope(chat(client, messages=audio_message()), 400)
    assert error["param"] == "messages[0].content[1].input_audio.data"
    assert "could not be decoded" in error["message"] and not llm.calls


@pytest.mark.parametrize(
    ("model", "schema"),
    [
        (ChatCompletionRequest, "CreateChatCompletionRequest"),
        (CompletionRequest, "CreateCompletionRequest"),
    ],
)
def test_every_openai_request_field_is_handled(model, schema):
    """No OpenAI field falls through to 'Unrecognized': each works, is advisory or is refused."""
    assert fields_of(schema) <= set(model.model_fields)


def test_request_bodies_validate_as_json_too():
    # the same rules whatever way the body is parsed
    raw = json.dumps({"model": SMART, "messages": MSG, "n": 1.0})
    with pytest.raises(ValueError):
        ChatCompletionRequest.model_validate_json(raw)
