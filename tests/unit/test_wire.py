"""Pure helpers on the wire: SSE framing, null-dropping, validation messages, import hygiene."""

import json
import subprocess
import sys

import pytest
from pydantic import ValidationError

from deployments.common.contracts import ErrorFrame
from deployments.common.errors import describe_validation_errors
from deployments.llm.schema import drop_nulls
from serve_app.protocol.openai import ChatCompletionRequest
from serve_app.sse import DONE, error_event, event


def test_sse_event_framing():
    assert event('{"a":1}') == b'data: {"a":1}\n\n'
    assert DONE == b"data: [DONE]\n\n"
    payload = json.loads(error_event(ErrorFrame(500, "x")).decode().removeprefix("data: "))
    assert payload == {
        "error": {"message": "x", "type": "server_error", "param": None, "code": None}
    }


def test_error_types_follow_status():
    assert ErrorFrame(400, "m").type == "invalid_request_error"
    assert ErrorFrame(429, "m").type == "rate_limit_error"
    assert ErrorFrame(503, "m").type == "server_error"


def test_drop_nulls_keeps_openai_required_nullables():
    vllm_style = {
        "service_tier": None,
        "choices": [
            {
                "message": {"content": None, "refusal": None, "reasoning": None},
                "logprobs": None,
                "finish_reason": None,
                "stop_reason": None,
            }
        ],
        "usage": {"prompt_tokens": 1, "prompt_tokens_details": None},
    }
    assert drop_nulls(vllm_style) == {
        "choices": [
            {"message": {"content": None, "refusal": None}, "logprobs": None, "finish_reason": None}
        ],
        "usage": {"prompt_tokens": 1},
    }


@pytest.mark.parametrize(
    ("body", "message", "param"),
    [
        # unknown fields first, then missing ones, then values; OpenAI's wording
        ({"n": 0, "foo": 1}, "Unrecognized request argument supplied: foo", "foo"),
        (
            {"n": 0, "messages": [{"role": "user"}]},
            "Missing required parameter: 'messages[0].content'.",
            "messages[0].content",
        ),
        (
            {"temperature": True},
            "Invalid type for 'temperature': expected a number, but got a boolean.",
            "temperature",
        ),
        ({"stop": [1]}, "Invalid type for 'stop[0]': expected a string", "stop[0]"),
        (
            {"messages": [{"role": "user", "content": [{"type": "video"}]}]},
            "Invalid value for 'messages[0].content[0].type': expected one of 'text'",
            "messages[0].content[0].type",
        ),
        (
            {"messages": [{"role": "wizard", "content": "x"}]},
            "Invalid value for 'messages[0].role': expected one of 'system'",
            "messages[0].role",
        ),
    ],
)
def test_validation_errors_name_the_param(body, message, param):
    request = {"model": "m", "messages": [{"role": "user", "content": "hi"}], **body}
    with pytest.raises(ValidationError) as info:
        ChatCompletionRequest.model_validate(request)
    got, got_param = describe_validation_errors(info.value.errors())
    assert got.startswith(message) and got_param == param


def test_ingress_imports_no_ml_stack():
    code = (
        "import sys, serve_app.app, serve_app.ingress;"
        "bad = [m for m in ('vllm', 'torch', 'faster_whisper', 'ctranslate2') if m in sys.modules];"
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
