"""Shape vLLM's OpenAI objects into OpenAI's published schemas, plus our usage extras.

vLLM adds extension fields and serialises unset optional ones as ``null`` (for example
``"service_tier": null`` or ``"prompt_tokens_details": null``), which OpenAI's schemas and
strict clients reject. We drop ``null`` everywhere except in the few fields OpenAI defines
as present-but-nullable, and add what our API promises on top of vLLM's answer:
``usage.tokens_per_second``, ``usage.reasoning_tokens`` (chat), ``logprobs.refusal`` (chat)
and, when asked for, the rendered ``prompt``.
"""

from dataclasses import dataclass, field
from typing import Any

# Fields OpenAI's schemas require even when null (choices, messages, deltas, logprobs).
KEEP_NULL = frozenset({"content", "refusal", "logprobs", "finish_reason"})


def drop_nulls(value: Any) -> Any:
    """Recursively remove ``None`` values, except for keys in ``KEEP_NULL``."""
    if isinstance(value, dict):
        return {k: drop_nulls(v) for k, v in value.items() if v is not None or k in KEEP_NULL}
    if isinstance(value, list):
        return [drop_nulls(v) for v in value]
    return value


@dataclass(slots=True)
class RequestStats:
    """What the engine reported about one API request (all its sequences together).

    Times are the engine's monotonic timestamps; ``prompt`` is the text the model saw (kept
    only when ``want_prompt``: decoding it costs time on every request).
    """

    want_prompt: bool = False
    prompt: str | None = None
    generated: int = 0
    scheduled_ts: float | None = None
    last_token_ts: float | None = None
    # The engine's own records of the request's sequences (vLLM's ``RequestState``), which
    # keep counting until the engine lets the request go: what ``used`` reads.
    states: list[Any] = field(default_factory=list)

    def used(self) -> dict[str, float]:
        """What the engine counted so far: the prompt once it was prefilled, and every token
        generated (a request cut short is charged this)."""
        generated = sum(s.stats.num_generation_tokens for s in self.states if s.stats)
        if not generated:
            return {}
        return {
            "prompt_tokens": float(max(s.prompt_len or 0 for s in self.states)),
            "completion_tokens": float(generated),
            "cached_tokens": float(max(s.num_cached_tokens for s in self.states)),
        }

    @property
    def prompt_tokens(self) -> int:
        return max((s.prompt_len or 0 for s in self.states), default=0)

    def observe(self, generated: int, scheduled_ts: float, last_token_ts: float) -> None:
        """Fold in one finished sequence's figures."""
        self.generated += generated
        if scheduled_ts and (self.scheduled_ts is None or scheduled_ts < self.scheduled_ts):
            self.scheduled_ts = scheduled_ts
        if last_token_ts and (self.last_token_ts is None or last_token_ts > self.last_token_ts):
            self.last_token_ts = last_token_ts

    @property
    def tokens_per_second(self) -> float | None:
        """Generated tokens over the time from scheduling (prefill included) to the last one."""
        if not self.generated or self.scheduled_ts is None or self.last_token_ts is None:
            return None
        elapsed = self.last_token_ts - self.scheduled_ts
        return round(self.generated / elapsed, 2) if elapsed > 0 else None


def add_usage_extras(usage: dict[str, Any], stats: RequestStats, chat: bool) -> None:
    """``tokens_per_second`` and (chat) ``reasoning_tokens`` at the top and in the details."""
    rate = stats.tokens_per_second
    if rate is not None:
        usage["tokens_per_second"] = rate
    if chat:
        details = usage.setdefault("completion_tokens_details", {})
        details.setdefault("reasoning_tokens", 0)
        usage["reasoning_tokens"] = details["reasoning_tokens"]


def add_logprobs_refusal(payload: dict[str, Any]) -> None:
    """Chat ``choices[].logprobs`` objects carry ``refusal`` (always null here)."""
    for choice in payload.get("choices") or ():
        logprobs = choice.get("logprobs")
        if isinstance(logprobs, dict):
            logprobs.setdefault("refusal", None)
