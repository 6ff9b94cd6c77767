"""The llama.cpp samplers as vLLM logits processors, on llama.cpp's own golden cases
(tests/test-sampling.cpp: test_penalties, test_dry, test_xtc)."""

import math
import random
from types import SimpleNamespace

import pytest
import torch
from vllm import SamplingParams
from vllm.v1.sample.logits_processor import BatchUpdate, MoveDirectionality

from deployments.llm.samplers import (
    DRY,
    XTC,
    RepeatPenaltyWindow,
    _DryState,
    _XTCState,
    breaker_map,
    dry_penalties,
    xtc,
)

CONFIG = SimpleNamespace(model_config=SimpleNamespace(max_model_len=1024))


def dry_state(allowed=2, base=1.1, breakers=None) -> _DryState:
    return _DryState(1.0, base, allowed, 1024, breakers or {}, None, [])


@pytest.mark.parametrize(
    ("history", "allowed", "breakers", "expected"),
    [
        ([0, 1, 2, 0, 1], 2, {}, {2: 1.0}),  # 0 1 seen before, followed by 2
        ([0, 1, 3, 4, 0, 1], 2, {3: [()]}, {}),  # the candidate 3 is a breaker
        ([0, 1, 2, 3, 4, 0, 1], 4, {}, {}),  # a 2-token repeat is allowed with length 4
        ([0, 1, 2, 0, 1, 2, 0, 1], 2, {}, {2: 1.1**3}),  # the longest match wins
        ([3, 0, 1, 2, 3, 0, 1], 2, {}, {2: 1.1}),  # a 3-token match
        ([3, 0, 1, 2, 3, 0, 1], 2, {3: [()]}, {2: 1.0}),  # ...cut to 2 by the breaker 3
        ([0, 1, 2, 0, 1, 7], 2, {7: [()]}, {}),  # a breaker last: nothing to extend
    ],
)
def test_dry_matches_llama_cpp(history, allowed, breakers, expected):
    penalties = dry_penalties(history, dry_state(allowed, breakers=breakers))
    assert penalties.keys() == expected.keys()
    for token, amount in expected.items():
        assert math.isclose(penalties[token], amount)


def test_dry_multi_token_breaker_needs_its_tail():
    history = [8, 9, 0, 1, 2, 8, 9, 0, 1]  # 8 9 0 1 repeats: a 4-token match
    assert dry_penalties(history, dry_state()) == {2: pytest.approx(1.1**2)}
    # 8 followed by 9 spells a breaker: the match stops after it
    assert dry_penalties(history, dry_state(breakers={8: [(9,)]})) == {2: 1.0}
    # 8 followed by 5 would, but 9 follows here
    assert dry_penalties(history, dry_state(breakers={8: [(5,)]})) == {2: pytest.approx(1.21)}


def test_breaker_table_from_vocabulary():
    texts = ["a", "b\n", ":", "x", "ab", "c"]

    class Tokenizer:
        def encode(self, text, add_special_tokens=False):
            return {"c": [5], "bc": [6, 5]}[text]

    table = breaker_map(Tokenizer(), texts, ("\n", ":", "abc"))
    assert table[1] == [()] and table[2] == [()]  # contain a breaker: break on their own
    assert table[4] == [(5,)]  # "ab" starts "abc": breaks when "c" follows
    assert table[0] == [(6, 5)]  # "a" too, when "bc" follows
    assert 3 not in table


def test_xtc_matches_llama_cpp():
    probs = torch.tensor([0.4, 0.3, 0.2, 0.1])
    for threshold, survivors in [(0.09, [3]), (0.19, [2, 3]), (0.39, [0, 1, 2, 3])]:
        row = probs.log().clone()
        xtc(row, _XTCState(0.99, threshold, 1, 0, 0.0, random.Random(0)))
        assert torch.isfinite(row).nonzero().flatten().tolist() == survivors


def test_xtc_counts_only_top_k_and_min_p_candidates():
    row = torch.tensor([0.4, 0.3, 0.2, 0.1]).log()
    # top_k 2 renormalises to .57/.43: both above .4, so the top one goes
    xtc(row, _XTCState(1.0, 0.4, 1, 2, 0.0, random.Random(0)))
    assert torch.isinf(row[0]) and torch.isfinite(row[1:]).all()


def add(index, **extra_args):
    params = SamplingParams(extra_args=extra_args, seed=1)
    return (index, params, [7, 7, 8], [9])


def test_repeat_penalty_window_state_follows_the_batch():
    proc = RepeatPenaltyWindow(CONFIG, torch.device("cpu"), False)
    logits = torch.zeros(3, 12)
    assert proc.apply(logits) is logits  # nobody asked: untouched
    proc.update_state(BatchUpdate(3, [], [add(0), add(1, repeat_penalty=2.0, repeat_last_n=2)], []))
    assert list(proc.states) == [1]  # request 0 asked for nothing
    logits = torch.tensor([[1.0] * 12, [2.0] * 6 + [-2.0] * 6, [1.0] * 12])
    proc.apply(logits)
    # window of 2 = last prompt token 8 and the output token 9
    assert logits[1, 8] == -4.0 and logits[1, 9] == -4.0 and logits[1, 7] == -2.0
    assert (logits[0] == 1.0).all()
    proc.update_state(BatchUpdate(3, [], [], [(1, 2, MoveDirectionality.UNIDIRECTIONAL)]))
    assert list(proc.states) == [2]
    proc.update_state(BatchUpdate(3, [2], [], []))
    assert proc.states == {}


@pytest.mark.parametrize(
    ("cls", "args"),
    [
        (RepeatPenaltyWindow, {"repeat_penalty": -1.0}),
        (RepeatPenaltyWindow, {"repeat_last_n": -2}),
        (DRY, {"dry_base": 0.5}),
        (DRY, {"dry_sequence_breakers": [1, 2]}),
        (XTC, {"xtc_probability": 2.0}),
        (XTC, {"xtc_min_keep": True}),
    ],
)
def test_bad_extra_args_are_refused(cls, args):
    with pytest.raises(ValueError):
        cls.validate_params(SamplingParams(extra_args=args))


def test_xtc_off_and_dry_off_keep_no_state():
    xtc_proc = XTC(CONFIG, torch.device("cpu"), False)
    xtc_proc.update_state(
        BatchUpdate(2, [], [add(0, xtc_probability=0.0), add(1, xtc_threshold=0.6)], [])
    )
    assert xtc_proc.states == {}
    dry = DRY(CONFIG, torch.device("cpu"), False)
    dry.update_state(BatchUpdate(1, [], [add(0, dry_multiplier=0.8, dry_penalty_last_n=0)], []))
    assert dry.states == {}
