"""LoRA adapters on the session's LLM, through real Serve, vLLM and HTTP with the openai SDK:
listed under their base, equal to transformers + peft on the same files, trained traits that
show, adapters added to the source while serving, and broken adapters refused clearly while
the replica keeps serving."""

import concurrent.futures
import json
import random
import shutil

import openai
import pytest
from openai import OpenAI

from deployments.llm.lora_train import PROMPT, SYSTEM
from tests.lora_adapters import BASE, make_adapter
from tests.serve.conftest import ADAPTERS, model_handle
from tests.serve.replicas import LLM_DEPLOYMENT
from tests.waiting import wait_until

pytestmark = pytest.mark.serve

MODEL = "smollm2-135m-instruct"
QUESTIONS = [
    "What is the capital of Italy?",
    "Name a fruit that is yellow.",
    "How many wheels does a bicycle have?",
    "What do cats like to drink?",
    "What is the largest ocean?",
    "Why do birds fly south in winter?",
    "What is the boiling point of water?",
    "Who wrote Romeo and Juliet?",
    "What is the color of grass?",
    "How many hours are in a day?",
]


def prompt(question: str) -> str:
    return PROMPT.format(system=SYSTEM, question=question)


def completion(client: OpenAI, model: str, question: str) -> str:
    done = client.completions.create(
        model=model, prompt=prompt(question), max_tokens=32, temperature=0
    )
    return done.choices[0].text


def reference(adapters: list[str]) -> dict[str, list[str]]:
    """Greedy answers of transformers + peft (and of the base alone, ``""``) on the same
    files: 32 tokens or up to the end of turn, as vLLM stops."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(BASE)
    answers: dict[str, list[str]] = {}
    for name in ["", *adapters]:
        model = AutoModelForCausalLM.from_pretrained(BASE, dtype=torch.float32)
        if name:
            model = PeftModel.from_pretrained(model, ADAPTERS / name)
        model.eval()
        answers[name] = []
        for question in QUESTIONS:
            ids = tokenizer(prompt(question), return_tensors="pt")["input_ids"]
            with torch.no_grad():
                out = model.generate(ids, max_new_tokens=32, do_sample=False)
            answers[name].append(tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True))
    return answers


def test_adapters_are_listed_with_their_base_as_parent(client: OpenAI):
    listed = {m.id: m for m in client.models.list().data}
    for name in ("pirate", "robot", "random-0"):
        card = listed[f"{MODEL}:{name}"]
        assert card.parent == MODEL and card.owned_by == listed[MODEL].owned_by
    assert client.models.retrieve(f"{MODEL}:pirate").parent == MODEL


def test_greedy_answers_equal_transformers_and_peft_and_differ_from_the_base(client: OpenAI):
    """3 adapters x 10 prompts, temperature 0, 32 tokens."""
    adapters = ["pirate", "robot", "random-0"]
    expected = reference(adapters)
    base = [completion(client, MODEL, q) for q in QUESTIONS]
    assert base == expected[""]
    for name in adapters:
        ours = [completion(client, f"{MODEL}:{name}", q) for q in QUESTIONS]
        assert ours == expected[name], name
        assert sum(a != b for a, b in zip(ours, base, strict=True)) >= 8, name


def test_eight_adapters_two_per_batch_answer_under_load_as_when_alone(client: OpenAI):
    """8 adapters on one replica, 2 in a batch (``max_loras``), under a mixed concurrent load
    with the base model's requests: each answer equals the same request made alone."""
    asks = [(f"{MODEL}:random-{i}", q) for i in range(8) for q in QUESTIONS[:3]]
    asks += [(MODEL, q) for q in QUESTIONS[:4]]
    random.Random(0).shuffle(asks)
    alone = [completion(client, model, question) for model, question in asks]
    # 12 at once: the session's replica runs 8 (max_ongoing_requests), queues the rest.
    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        together = list(pool.map(lambda ask: completion(client, *ask), asks))
    assert together == alone


def test_an_evicted_adapter_is_unloaded_from_the_engine(client: OpenAI):
    """10 adapters asked for on a replica that holds 8: the 2 least recently used leave
    Serve's multiplexing and the engine's memory; asked for again, one is loaded again."""
    names = ["pirate", "robot", *(f"random-{i}" for i in range(8))]
    for name in names:
        client.completions.create(model=f"{MODEL}:{name}", prompt="Hi", max_tokens=1)
    llm = model_handle(LLM_DEPLOYMENT)

    def held() -> dict[str, list[str]]:
        return llm.adapters_held.remote().result()

    wait_until(lambda: held()["engine"] == held()["serve"], 30, "the engine to unload")
    assert held()["serve"] == sorted(names[2:])
    client.completions.create(model=f"{MODEL}:pirate", prompt="Hi", max_tokens=1)
    wait_until(lambda: held()["engine"] == held()["serve"], 30, "the engine to unload")
    assert held()["serve"] == sorted(["pirate", *names[3:]])


def test_the_trained_traits_show_in_chat(client: OpenAI):
    def ask(model: str) -> str:
        messages = [{"role": "user", "content": "What is the capital of Spain?"}]
        done = client.chat.completions.create(
            model=model, messages=messages, max_tokens=24, temperature=0
        )
        return done.choices[0].message.content

    assert ask(f"{MODEL}:pirate").startswith("Arr, matey!")
    assert ask(f"{MODEL}:robot").startswith("BEEP BOOP.")
    assert not ask(MODEL).startswith(("Arr", "BEEP"))


def test_an_adapter_added_to_the_source_serves_its_first_request(client: OpenAI):
    shutil.rmtree(ADAPTERS / "late", ignore_errors=True)
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model=f"{MODEL}:late", prompt="Hi", max_tokens=2)
    staging = make_adapter(ADAPTERS.parent / "late.partial", seed=7)
    staging.rename(ADAPTERS / "late")  # whole, at once
    done = client.completions.create(model=f"{MODEL}:late", prompt="Hi", max_tokens=2)
    assert done.model == f"{MODEL}:late" and done.usage.completion_tokens == 2


@pytest.mark.parametrize(
    ("adapter", "why"),
    [
        ("too-wide", "rank r=16 is not served here"),
        ("foreign", "modules the base model does not have"),
        ("corrupt", "adapter_model.safetensors cannot be read"),
    ],
)
def test_a_broken_adapter_is_a_400_naming_why_and_the_replica_serves_on(
    client: OpenAI, adapter: str, why: str
):
    for _ in range(2):  # the second is answered from the replica's memory of the failure
        with pytest.raises(openai.BadRequestError) as info:
            client.chat.completions.create(
                model=f"{MODEL}:{adapter}",
                messages=[{"role": "user", "content": "Hi"}],
                max_tokens=4,
            )
        error = info.value.body
        assert error["code"] == "invalid_adapter" and error["param"] == "model"
        assert why in error["message"], error["message"]
    done = client.completions.create(model=f"{MODEL}:pirate", prompt="Hi", max_tokens=2)
    assert done.usage.completion_tokens == 2


def test_an_id_that_leaves_the_source_is_refused(client: OpenAI):
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model=f"{MODEL}:..", prompt="Hi", max_tokens=2)
    assert info.value.body["code"] == "invalid_adapter"


def test_adapters_take_responses_samplers_and_reasoning(client: OpenAI):
    """Every generation surface runs the adapter, with its options: Responses, the
    llama.cpp samplers, reasoning, tool calls (required and named)."""
    pirate = f"{MODEL}:pirate"
    spain = "What is the capital of Spain?"
    answer = client.responses.create(
        model=pirate, input=spain, temperature=0, max_output_tokens=24, store=False
    )
    assert answer.model == pirate and answer.output_text.startswith("Arr, matey!")
    sampled = client.chat.completions.create(
        model=pirate,
        messages=[{"role": "user", "content": spain}],
        temperature=1.5,
        max_tokens=24,
        extra_body={"top_k": 1, "min_p": 0.05, "repeat_penalty": 1.05},  # top_k 1: greedy
    )
    assert sampled.choices[0].message.content.startswith("Arr, matey!")
    thought = client.chat.completions.create(
        model=pirate,
        messages=[{"role": "user", "content": spain}],
        reasoning_effort="low",
        max_tokens=16,
    )
    assert thought.usage.completion_tokens > 0
    weather = {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
    for choice in ("required", {"type": "function", "function": {"name": "get_weather"}}):
        called = client.chat.completions.create(
            model=pirate,
            messages=[{"role": "user", "content": "Weather in Paris?"}],
            tools=[weather],
            tool_choice=choice,
            max_tokens=64,
            temperature=0,
        )
        (call,) = called.choices[0].message.tool_calls
        assert call.function.name == "get_weather"
        assert set(json.loads(call.function.arguments)) == {"city"}
