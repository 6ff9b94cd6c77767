"""llama.cpp's repetition window, DRY and XTC samplers as vLLM (V1) custom logits processors.

Loaded into every LLM replica's engine (``logits_processors`` engine arg). A request turns a
sampler on through ``SamplingParams.extra_args`` (the request's ``vllm_xargs``, filled by the
ingress from ``repeat_penalty``/``repeat_last_n``, ``dry_*`` and ``xtc_*``). Requests that ask
for none keep no state, and ``apply`` returns at once when no request in the batch has state.

Semantics follow llama.cpp's ``src/llama-sampling.cpp``: the history a sampler looks at is
the prompt followed by the generated tokens; the repeat penalty divides positive logits and
multiplies negative ones once per distinct token in the last ``repeat_last_n`` tokens; DRY
(#9702) subtracts ``multiplier * base ** (length - allowed_length)`` from each token that would
extend a repeated sequence, where sequence breakers stop matches; XTC (#9742) removes, with
probability ``xtc_probability``, every token at or above ``xtc_threshold`` but the least
likely of them. vLLM applies these before its own penalties, temperature and top-k/top-p.
"""

import math
import random
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from vllm import SamplingParams
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor
from vllm.v1.sample.logits_processor.builtin import process_dict_updates

MAX_BREAKER_TABLES = 16
DRY_DEFAULT_BREAKERS = ("\n", ":", '"', "*")
_MAX_BREAKER_CHARS = 40  # llama.cpp truncates breaker strings and their token tails
_MAX_BREAKER_TAIL = 20
_MAX_EXP_LOG = 88.7228391  # ln(FLT_MAX): DRY's exponent is capped so the penalty stays finite


def _history(prompt: Sequence[int] | None, output: Sequence[int], last_n: int) -> list[int]:
    """The last ``last_n`` tokens of prompt + output (``-1``: all of them)."""
    prompt = prompt or ()
    if last_n < 0:
        return [*prompt, *output]
    if len(output) >= last_n:
        return list(output[len(output) - last_n :])
    keep = last_n - len(output)
    return [*prompt[max(len(prompt) - keep, 0) :], *output]


def _require(args: dict[str, Any], name: str, kind: type | tuple[type, ...], check) -> None:
    if name in args:
        value = args[name]
        if isinstance(value, bool) or not isinstance(value, kind) or not check(value):
            raise ValueError(f"invalid value for {name}: {value!r}")


class _SparseProcessor(LogitsProcessor):
    """Per-request state for the requests that asked for this sampler, kept by batch index."""

    def __init__(self, vllm_config: Any, device: torch.device, is_pin_memory: bool) -> None:
        self.states: dict[int, Any] = {}

    def is_argmax_invariant(self) -> bool:
        return False  # every sampler here can change the greedy choice

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        process_dict_updates(self.states, batch_update, self.new_state)

    def new_state(self, params: SamplingParams, prompt: list[int] | None, output: list[int]):
        raise NotImplementedError


@dataclass(slots=True)
class _RepeatState:
    penalty: float
    last_n: int
    prompt: list[int] | None
    output: list[int]


class RepeatPenaltyWindow(_SparseProcessor):
    """``repeat_penalty`` over the last ``repeat_last_n`` tokens (prompt included)."""

    @classmethod
    def validate_params(cls, params: SamplingParams) -> None:
        args = params.extra_args or {}
        _require(args, "repeat_penalty", (int, float), lambda v: v > 0)
        _require(args, "repeat_last_n", int, lambda v: v >= -1)

    def new_state(self, params, prompt, output) -> _RepeatState | None:
        args = params.extra_args or {}
        penalty = float(args.get("repeat_penalty", 1.0))
        last_n = int(args.get("repeat_last_n", 64))
        if penalty == 1.0 or last_n == 0:
            return None
        return _RepeatState(penalty, last_n, prompt, output)

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        for index, state in self.states.items():
            tokens = torch.tensor(
                sorted(set(_history(state.prompt, state.output, state.last_n))), dtype=torch.long
            )
            if tokens.numel() == 0:
                continue
            row = logits[index]
            values = row[tokens]
            row[tokens] = torch.where(values > 0, values / state.penalty, values * state.penalty)
        return logits


@dataclass(slots=True)
class _DryState:
    multiplier: float
    base: float
    allowed: int
    last_n: int
    breakers: dict[int, list[tuple[int, ...]]]  # head token -> token tails ((): the token alone)
    prompt: list[int] | None
    output: list[int]
    max_exponent: int = field(init=False)

    def __post_init__(self) -> None:
        self.max_exponent = int(_MAX_EXP_LOG / math.log(self.base)) if self.base > 1.000001 else 0


class DRY(_SparseProcessor):
    """DRY ("don't repeat yourself"): penalise tokens that would extend a repeated sequence."""

    def __init__(self, vllm_config: Any, device: torch.device, is_pin_memory: bool) -> None:
        super().__init__(vllm_config, device, is_pin_memory)
        self.model_config = vllm_config.model_config
        self.context = vllm_config.model_config.max_model_len
        self.vocabulary: tuple[Any, tuple[str, ...]] | None = None
        # breaker table per breaker list; bounded, since requests choose the lists
        self.tables: OrderedDict[tuple[str, ...], dict[int, list[tuple[int, ...]]]] = OrderedDict()
        if getattr(self.model_config, "tokenizer", None):
            # ~0.3 s here rather than inside the first DRY request's engine step
            self.breaker_map(DRY_DEFAULT_BREAKERS)

    @classmethod
    def validate_params(cls, params: SamplingParams) -> None:
        args = params.extra_args or {}
        _require(args, "dry_multiplier", (int, float), lambda v: v >= 0)
        _require(args, "dry_base", (int, float), lambda v: v >= 1)
        _require(args, "dry_allowed_length", int, lambda v: v >= 0)
        _require(args, "dry_penalty_last_n", int, lambda v: v >= -1)
        _require(
            args,
            "dry_sequence_breakers",
            list,
            lambda v: all(isinstance(s, str) for s in v),
        )

    def new_state(self, params, prompt, output) -> _DryState | None:
        args = params.extra_args or {}
        multiplier = float(args.get("dry_multiplier", 0.0))
        last_n = int(args.get("dry_penalty_last_n", -1))
        if multiplier == 0 or last_n == 0:
            return None
        breakers = tuple(args.get("dry_sequence_breakers", DRY_DEFAULT_BREAKERS))
        return _DryState(
            multiplier,
            float(args.get("dry_base", 1.75)),
            int(args.get("dry_allowed_length", 2)),
            self.context if last_n < 0 else last_n,
            self.breaker_map(breakers),
            prompt,
            output,
        )

    def breaker_map(self, breakers: tuple[str, ...]) -> dict[int, list[tuple[int, ...]]]:
        """The breaker table for ``breakers`` (building one scans the vocabulary)."""
        if breakers in self.tables:
            self.tables.move_to_end(breakers)
            return self.tables[breakers]
        if self.vocabulary is None:
            self.vocabulary = _vocabulary(self.model_config)
        table = self.tables[breakers] = breaker_map(*self.vocabulary, breakers)
        if len(self.tables) > MAX_BREAKER_TABLES:
            self.tables.popitem(last=False)
        return table

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        for index, state in self.states.items():
            penalties = dry_penalties(_history(state.prompt, state.output, state.last_n), state)
            if penalties:
                tokens = torch.tensor(list(penalties), dtype=torch.long)
                amounts = torch.tensor(list(penalties.values()), dtype=logits.dtype)
                logits[index, tokens] -= amounts
        return logits


def dry_penalties(history: list[int], state: _DryState) -> dict[int, float]:
    """Token -> amount to subtract from its logit, for one request's history."""
    n = len(history)
    if n <= state.allowed:
        return {}
    # Matches may not reach back past the most recent sequence breaker.
    limit = n
    for i in range(n):  # i-th most recent token
        tails = state.breakers.get(history[n - 1 - i])
        if tails is None:
            continue
        best = -1
        for tail in tails:
            size = len(tail)
            if best < size <= i and all(tail[j] == history[n - i + j] for j in range(size)):
                best = size
        if best >= 0:
            limit = i - best
            break
    if limit < state.allowed or limit == 0:
        return {}
    window = np.asarray(history)
    last = window[-1]
    lengths: dict[int, int] = {}
    # Each earlier position p ending like the history does: how far back the match goes.
    for p in np.flatnonzero(window[:-1] == last):
        length = 1
        while length < limit and p - length >= 0 and window[p - length] == window[-1 - length]:
            length += 1
        if length >= state.allowed:
            token = int(window[p + 1])
            lengths[token] = max(lengths.get(token, 0), length)
    penalties = {}
    for token, length in lengths.items():
        if () in state.breakers.get(token, ()):
            continue  # a token that is itself a breaker is never penalised
        exponent = length - state.allowed
        if state.max_exponent and exponent > state.max_exponent:
            exponent = state.max_exponent
        penalties[token] = state.multiplier * state.base**exponent
    return penalties


def _vocabulary(model_config: Any) -> tuple[Any, tuple[str, ...]]:
    """The tokenizer and every token's text."""
    from vllm.tokenizers import cached_tokenizer_from_config  # noqa: PLC0415

    tokenizer = cached_tokenizer_from_config(model_config)
    size = len(tokenizer)
    return tokenizer, tuple(tokenizer.decode([i]) for i in range(size))


def breaker_map(
    tokenizer: Any, texts: Sequence[str], breakers: tuple[str, ...]
) -> dict[int, list[tuple[int, ...]]]:
    """llama.cpp's breaker table: a token containing a breaker breaks on its own (tail ``()``);
    a token ending in the start of a breaker breaks when the rest of the breaker follows."""
    table: dict[int, list[tuple[int, ...]]] = {}
    for breaker in breakers:
        breaker = breaker[:_MAX_BREAKER_CHARS]
        if not breaker:
            continue
        for token, text in enumerate(texts):
            if breaker in text:
                tails = table.setdefault(token, [])
                if () not in tails:
                    tails.append(())
                continue
            for pos, char in enumerate(text):
                if char == breaker[0] and breaker.startswith(text[pos:]):
                    rest = breaker[len(text) - pos :]
                    ids = tokenizer.encode(rest, add_special_tokens=False)[:_MAX_BREAKER_TAIL]
                    tails = table.setdefault(token, [])
                    if tuple(ids) not in tails:
                        tails.append(tuple(ids))
    return table


@dataclass(slots=True)
class _XTCState:
    probability: float
    threshold: float
    min_keep: int
    top_k: int
    min_p: float
    rng: random.Random


class XTC(_SparseProcessor):
    """Exclude Top Choices: sometimes drop all likely tokens but the least likely of them."""

    @classmethod
    def validate_params(cls, params: SamplingParams) -> None:
        args = params.extra_args or {}
        _require(args, "xtc_probability", (int, float), lambda v: 0 <= v <= 1)
        _require(args, "xtc_threshold", (int, float), lambda v: 0 <= v <= 1)
        _require(args, "xtc_min_keep", int, lambda v: v >= 0)

    def new_state(self, params, prompt, output) -> _XTCState | None:
        args = params.extra_args or {}
        probability = float(args.get("xtc_probability", 0.0))
        threshold = float(args.get("xtc_threshold", 0.1))
        if probability <= 0 or threshold > 0.5:
            return None
        return _XTCState(
            probability,
            threshold,
            int(args.get("xtc_min_keep", 1)),
            params.top_k if params.top_k and params.top_k > 0 else 0,
            params.min_p or 0.0,
            random.Random(params.seed),
        )

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        for index, state in self.states.items():
            xtc(logits[index], state)
        return logits


def xtc(row: torch.Tensor, state: _XTCState) -> None:
    """Apply XTC to one request's logits in place (candidates: after its top-k and min-p).

    No sort of the vocabulary: a top-k (when set), a min-p mask and one softmax.
    """
    if state.top_k and state.top_k < row.numel():
        values, index = torch.topk(row, state.top_k)
    else:
        values, index = row, None
    candidates = torch.isfinite(values)
    if state.min_p > 0:
        candidates &= values >= values.max() + math.log(state.min_p)
    count = int(candidates.sum())
    if count < 2 or state.rng.random() > state.probability:
        return
    probs = torch.softmax(values.masked_fill(~candidates, float("-inf")), dim=0)
    top = torch.nonzero(probs >= state.threshold).flatten()  # the top choices
    if top.numel() < 2 or count - (top.numel() - 1) < state.min_keep:
        return
    keep = top[torch.argmin(probs[top])]  # the least likely top choice stays
    drop = top[top != keep]
    row[drop if index is None else index[drop]] = float("-inf")
