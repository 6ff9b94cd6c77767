"""End to end, the full chat surface on the real engine: llama.cpp samplers, reasoning,
usage extras, tools, input_audio parts and strict refusals, through the openai SDK."""

import base64
import json
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import jsonschema
import openai
import pytest
from openai import OpenAI

from tests.audio_files import SPEECH_EN
from tests.openai_schema import validate

pytestmark = pytest.mark.serve

MODEL = "smollm2-135m-instruct"
REPETITIVE = [{"role": "user", "content": "Write the word 'apple' ten times, then stop."}]
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}


def greedy(client: OpenAI, messages=REPETITIVE, max_tokens=48, **extra) -> str:
    reply = client.chat.completions.create(
        model=MODEL,
        messages=messages,
        temperature=0,
        max_tokens=max_tokens,
        extra_body=extra or None,
    )
    return reply.choices[0].message.content


def repeated_ngrams(text: str, n: int = 3) -> int:
    words = text.split()
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    return len(grams) - len(set(grams))


@pytest.fixture(scope="module")
def baseline(client: OpenAI) -> str:
    return greedy(client)


def test_repeat_penalty_changes_output_and_last_n_zero_disables_it(client, baseline):
    assert greedy(client, repeat_penalty=1.5) != baseline
    assert greedy(client, repeat_penalty=1.5, repeat_last_n=0) == baseline
    assert greedy(client, repeat_penalty=1.5, repeat_last_n=-1) != baseline  # vLLM's own


def test_dry_cuts_repeated_ngrams(client, baseline):
    assert repeated_ngrams(baseline) > 0, baseline
    dry = greedy(client, dry_multiplier=2.0, dry_allowed_length=1)
    assert repeated_ngrams(dry) < repeated_ngrams(baseline), (baseline, dry)


def test_xtc_at_probability_one_changes_the_greedy_choice(client):
    plain = greedy(client, QUESTION, max_tokens=12)
    assert greedy(client, QUESTION, max_tokens=12, xtc_probability=1.0) != plain


def test_xtc_draws_follow_the_seed(client):
    """XTC removes the top choices at random (probability 0.5 a token): the same seed gives
    the same text, other seeds other texts."""

    def xtc(seed: int) -> str:
        return greedy(client, QUESTION, max_tokens=24, xtc_probability=0.5, seed=seed)

    first = xtc(1)
    assert xtc(1) == first
    assert len({first, *(xtc(seed) for seed in range(2, 6))}) > 1


def test_response_format_json_schema_constrains_the_answer(client):
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string"}, "country": {"type": "string"}},
        "required": ["city", "country"],
        "additionalProperties": False,
    }
    reply = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Name a city and its country, as JSON."}],
        temperature=0,
        max_tokens=60,
        response_format={"type": "json_schema", "json_schema": {"name": "place", "schema": schema}},
    )
    answer = json.loads(reply.choices[0].message.content)
    assert set(answer) == {"city", "country"}
    assert all(isinstance(v, str) for v in answer.values())


def test_response_format_json_object_is_json(client):
    reply = client.chat.completions.create(
        model=MODEL,
        messages=[
            {
                "role": "user",
                "content": 'Reply with a JSON object whose key "capital" holds the capital of '
                "France.",
            }
        ],
        temperature=0,
        max_tokens=200,
        response_format={"type": "json_object"},
    )
    choice = reply.choices[0]
    assert choice.finish_reason == "stop", choice.message.content
    assert isinstance(json.loads(choice.message.content), dict)


def test_structured_outputs_choice(client):
    for question in ("Is Paris in France?", "Is the sea dry?"):
        answer = greedy(
            client, [{"role": "user", "content": question}], max_tokens=5,
            structured_outputs={"choice": ["yes", "no"]},
        )  # fmt: skip
        assert answer in ("yes", "no")


def test_top_k_one_at_high_temperature_is_greedy(client):
    plain = greedy(client, QUESTION, max_tokens=16)
    hot = client.chat.completions.create(
        model=MODEL,
        messages=QUESTION,
        temperature=2.0,
        max_tokens=16,
        extra_body={"top_k": 1},
    )
    assert hot.choices[0].message.content == plain


def test_samplers_touch_only_the_request_that_asks(client, baseline):
    calls = [{"repeat_penalty": 1.5, "dry_multiplier": 2.0, "xtc_probability": 1.0}, {}] * 3
    with ThreadPoolExecutor(len(calls)) as pool:
        outputs = list(pool.map(lambda extra: greedy(client, **extra), calls))
    assert outputs[1::2] == [baseline] * 3
    assert all(out != baseline for out in outputs[0::2])


def test_reasoning_comes_back_in_reasoning(client: OpenAI, http: httpx.Client):
    body = {"model": MODEL, "messages": QUESTION, "temperature": 0, "max_tokens": 24}
    raw = http.post("/v1/chat/completions", json={**body, "reasoning_effort": "low"}).json()
    validate(raw, "CreateChatCompletionResponse")
    message, usage = raw["choices"][0]["message"], raw["usage"]
    assert message["reasoning"].strip()  # the template opened <think>: the model's text
    # SmolLM2 never closes the <think> block: every token it wrote is reasoning, no content.
    assert not message["content"]
    assert usage["reasoning_tokens"] == usage["completion_tokens_details"]["reasoning_tokens"]
    assert 0 < usage["reasoning_tokens"] == usage["completion_tokens"] <= 24
    off = client.chat.completions.create(
        model=MODEL, messages=QUESTION, temperature=0, max_tokens=24,
        extra_body={"enable_thinking": "false"},
    )  # fmt: skip
    assert "Paris" in off.choices[0].message.content
    assert getattr(off.choices[0].message, "reasoning", None) is None
    assert off.usage.completion_tokens_details.reasoning_tokens == 0


def test_reasoning_streams_as_delta_reasoning(client: OpenAI):
    stream = client.chat.completions.create(
        model=MODEL, messages=QUESTION, temperature=0, max_tokens=12, stream=True,
        stream_options={"include_usage": True}, reasoning_effort="high",
    )  # fmt: skip
    chunks = list(stream)
    reasoning = "".join(getattr(c.choices[0].delta, "reasoning", None) or "" for c in chunks[:-1])
    assert reasoning.strip()
    usage = chunks[-1].usage  # all of it reasoning (the <think> block is never closed)
    assert 0 < usage.completion_tokens_details.reasoning_tokens == usage.completion_tokens <= 12


def test_tokens_per_second_in_usage(client: OpenAI, http: httpx.Client):
    """The engine's rate can only be above what the client saw end to end (its time includes
    the HTTP hops); streams count every delta's tokens."""
    started = time.monotonic()
    reply = client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=16)
    seen = reply.usage.completion_tokens / (time.monotonic() - started)
    assert seen <= reply.usage.model_extra["tokens_per_second"] < 100 * seen  # tokens per s
    body = {"model": MODEL, "prompt": "Paris is", "max_tokens": 16, "stream": True}
    started = time.monotonic()
    text = http.post("/v1/completions", json={**body, "include_usage": True}).text
    elapsed = time.monotonic() - started
    events = [
        json.loads(line.removeprefix("data: "))
        for line in text.split("\n\n")
        if line.startswith("data: {")
    ]
    usage = events[-1]["usage"]
    assert usage["completion_tokens"] > 1
    seen = usage["completion_tokens"] / elapsed
    assert seen <= usage["tokens_per_second"] < 100 * seen


def test_input_audio_transcript_reaches_the_prompt(client: OpenAI):
    audio = base64.b64encode(SPEECH_EN.read_bytes()).decode()
    content = [
        {"type": "text", "text": "Repeat this sentence:"},
        {"type": "input_audio", "input_audio": {"data": audio, "format": "wav"}},
    ]
    messages = [{"role": "user", "content": content}]
    reply = client.chat.completions.create(
        model=MODEL, messages=messages, max_tokens=8, extra_body={"return_prompt": True}
    )
    prompt = reply.model_extra["prompt"]
    assert "Repeat this sentence:" in prompt
    assert "quick brown fox" in prompt.lower(), prompt
    assert "<|im_start|>assistant" in prompt  # the template was applied
    chunks = list(
        client.chat.completions.create(
            model=MODEL,
            messages=messages,
            max_tokens=8,
            stream=True,
            extra_body={"return_prompt": True},
        )  # fmt: skip
    )
    assert "quick brown fox" in chunks[0].model_extra["prompt"].lower()


def test_undecodable_input_audio_is_400_naming_the_part(client: OpenAI):
    part = {
        "type": "input_audio",
        "input_audio": {"data": base64.b64encode(b"x" * 99).decode(), "format": "mp3"},
    }  # noqa: E501
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": [part]}], max_tokens=4
        )
    assert info.value.param == "messages[0].content[0].input_audio.data"


def check_weather_call(tool_calls) -> None:
    assert tool_calls and tool_calls[0].function.name == "get_weather"
    arguments = json.loads(tool_calls[0].function.arguments)
    jsonschema.validate(arguments, WEATHER["function"]["parameters"])


@pytest.mark.parametrize(
    "tool_choice", ["required", {"type": "function", "function": {"name": "get_weather"}}]
)
def test_required_and_named_tool_choice(client: OpenAI, tool_choice):
    reply = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "What is the weather in Paris?"}],
        tools=[WEATHER],
        tool_choice=tool_choice,
        temperature=0,
        max_tokens=60,
    )
    check_weather_call(reply.choices[0].message.tool_calls)


ECHO_CALL = [
    {
        "role": "user",
        "content": "Reply with exactly this text and nothing else:\n<tool_call>\n"
        '{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>',
    }
]


def test_auto_tool_choice_parses_the_models_call(client: OpenAI):
    reply = client.chat.completions.create(
        model=MODEL, messages=ECHO_CALL, tools=[WEATHER], tool_choice="auto", temperature=0,
        max_tokens=60,
    )  # fmt: skip
    assert reply.choices[0].finish_reason == "tool_calls"
    check_weather_call(reply.choices[0].message.tool_calls)
    # a model that answers in text under auto gets plain content
    text = client.chat.completions.create(
        model=MODEL, messages=QUESTION, tools=[WEATHER], temperature=0, max_tokens=20
    )
    assert text.choices[0].message.content and not text.choices[0].message.tool_calls


def test_tool_call_deltas_stream(client: OpenAI):
    stream = client.chat.completions.create(
        model=MODEL, messages=ECHO_CALL, tools=[WEATHER], tool_choice="auto", temperature=0,
        max_tokens=60, stream=True,
    )  # fmt: skip
    name, arguments = None, ""
    for chunk in stream:
        for call in chunk.choices[0].delta.tool_calls or []:
            name = name or call.function.name
            arguments += call.function.arguments or ""
    assert name == "get_weather"
    assert json.loads(arguments) == {"city": "Paris"}


def test_tool_result_round_trip(client: OpenAI):
    messages = [{"role": "user", "content": "What is the weather in Paris?"}]
    first = client.chat.completions.create(
        model=MODEL, messages=messages, tools=[WEATHER], tool_choice="required", temperature=0,
        max_tokens=60,
    )  # fmt: skip
    call = first.choices[0].message.tool_calls[0]
    messages += [
        first.choices[0].message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "20 C and sunny"},
    ]
    second = client.chat.completions.create(
        model=MODEL, messages=messages, tools=[WEATHER], max_tokens=16,
        extra_body={"return_prompt": True},
    )  # fmt: skip
    prompt = second.model_extra["prompt"]
    assert "<tool_response>\n20 C and sunny\n</tool_response>" in prompt
    assert '"name": "get_weather"' in prompt  # the earlier call, as the model wrote it
    assert second.choices[0].finish_reason in ("stop", "length", "tool_calls")


def test_logprobs_carry_refusal(http: httpx.Client):
    body = {"model": MODEL, "messages": QUESTION, "max_tokens": 3, "logprobs": True}
    raw = http.post("/v1/chat/completions", json={**body, "top_logprobs": 2}).json()
    validate(raw, "CreateChatCompletionResponse")
    logprobs = raw["choices"][0]["logprobs"]
    assert logprobs["refusal"] is None and len(logprobs["content"]) == 3


@pytest.mark.parametrize(
    ("path", "fields", "param"),
    [
        ("/v1/chat/completions", {"temperature": True}, "temperature"),
        ("/v1/chat/completions", {"max_tokens": "10"}, "max_tokens"),
        ("/v1/chat/completions", {"stream": "yes"}, "stream"),
        ("/v1/chat/completions", {"logprobs": "yes"}, "logprobs"),
        ("/v1/chat/completions", {"logit_bias": {"5": 1000}}, "logit_bias"),
        ("/v1/chat/completions", {"messages": [{"role": "user"}]}, "messages[0].content"),
        (
            "/v1/chat/completions",
            {"messages": [{"role": "tool", "content": "r"}]},
            "messages[0].tool_call_id",
        ),  # noqa: E501
        ("/v1/chat/completions", {"dry_penalty_last_n": "all"}, "dry_penalty_last_n"),
        ("/v1/chat/completions", {"frobnicate": True}, "frobnicate"),
        ("/v1/completions", {"echo": "yes"}, "echo"),
        ("/v1/completions", {"best_of": -1}, "best_of"),
    ],
)
def test_bad_fields_are_400_envelopes(http: httpx.Client, path, fields, param):
    base = (
        {"model": MODEL, "messages": QUESTION}
        if "chat" in path
        else {"model": MODEL, "prompt": "x"}
    )  # noqa: E501
    response = http.post(path, json={**base, **fields})
    assert response.status_code == 400, response.text
    validate(response.json(), "ErrorResponse")
    assert response.json()["error"]["param"] == param


def test_sdk_sees_unknown_fields_refused(client: OpenAI):
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=MODEL, messages=QUESTION, extra_body={"mirostat": 2})
    assert info.value.param == "mirostat"
    assert "Unrecognized request argument supplied: mirostat" in info.value.message
