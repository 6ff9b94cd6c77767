"""What the LLM replica adds to usage: ``tokens_per_second`` from the engine's timestamps
(``RequestStats``) and ``reasoning_tokens`` from the ``think_tags`` parser, with exact
expectations."""

import os
from pathlib import Path

import pytest

from deployments.llm.schema import RequestStats, add_usage_extras

MODEL = Path(os.environ.get("SERVE_APP_MODELS_DIR", "models")) / "smollm2-135m-instruct"


def test_stats_fold_every_sequence_of_a_request():
    stats = RequestStats()
    assert stats.tokens_per_second is None  # nothing generated yet
    stats.observe(generated=10, scheduled_ts=100.0, last_token_ts=101.0)
    stats.observe(generated=30, scheduled_ts=99.5, last_token_ts=102.0)  # n=2: the other one
    assert (stats.generated, stats.scheduled_ts, stats.last_token_ts) == (40, 99.5, 102.0)
    assert stats.tokens_per_second == 16.0  # 40 tokens over 2.5 s, prefill included
    stalled = RequestStats()
    stalled.observe(generated=1, scheduled_ts=5.0, last_token_ts=5.0)
    assert stalled.tokens_per_second is None  # no time elapsed: no rate, never a division


def test_usage_extras():
    stats = RequestStats()
    stats.observe(generated=8, scheduled_ts=1.0, last_token_ts=3.0)
    usage = {"completion_tokens": 8, "completion_tokens_details": {"reasoning_tokens": 5}}
    add_usage_extras(usage, stats, chat=True)
    assert usage["tokens_per_second"] == 4.0 and usage["reasoning_tokens"] == 5
    plain = {"completion_tokens": 8}
    add_usage_extras(plain, RequestStats(), chat=True)
    assert plain == {"completion_tokens": 8, "completion_tokens_details": {"reasoning_tokens": 0},
                     "reasoning_tokens": 0}  # fmt: skip
    completion = {"completion_tokens": 8}
    add_usage_extras(completion, stats, chat=False)
    assert completion == {"completion_tokens": 8, "tokens_per_second": 4.0}


@pytest.fixture(scope="module")
def tokenizer():
    if not MODEL.is_dir():
        pytest.skip("models not prepared (make setup)")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(MODEL))


def parser(tokenizer, thinking: bool):
    from deployments.llm.reasoning import ThinkTagsReasoningParser

    return ThinkTagsReasoningParser(tokenizer, chat_template_kwargs={"enable_thinking": thinking})


def test_think_tags_split_reasoning_from_content(tokenizer):
    thinking = parser(tokenizer, True)
    assert thinking.extract_reasoning("<think>It is Paris.</think>Paris.", None) == (
        "It is Paris.",
        "Paris.",
    )
    assert thinking.extract_reasoning("I wonder", None) == ("I wonder", None)  # never closed
    assert parser(tokenizer, False).extract_reasoning("<think>a</think>b", None) == (
        None,
        "<think>a</think>b",
    )


def test_reasoning_tokens_count_up_to_the_closing_tag(tokenizer):
    thought = tokenizer.encode("<think>I wonder</think>", add_special_tokens=False)
    answer = tokenizer.encode("Paris.", add_special_tokens=False)
    thinking = parser(tokenizer, True)
    assert thinking.count_reasoning_tokens(thought + answer) == len(thought)
    # SmolLM2 never closes the block: with thinking on, every generated token is reasoning.
    assert thinking.count_reasoning_tokens(answer + answer) == 2 * len(answer)
    assert parser(tokenizer, False).count_reasoning_tokens(thought + answer) == 0
