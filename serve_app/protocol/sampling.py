"""Sampling fields shared by chat and completions: OpenAI's, vLLM's and llama.cpp's.

llama.cpp's samplers keep llama.cpp's names, meaning and defaults (its ``common.h``):
``repeat_penalty`` over the last ``repeat_last_n`` tokens (64; 0 off, -1 the whole context),
DRY (``dry_multiplier`` 0 = off, ``dry_base`` 1.75, ``dry_allowed_length`` 2,
``dry_penalty_last_n`` -1, ``dry_sequence_breakers`` ``["\\n", ":", "\\"", "*"]``) and XTC
(``xtc_probability`` 0 = off, ``xtc_threshold`` 0.1, ``xtc_min_keep`` 1). The LLM replicas
run them as vLLM logits processors; they get their arguments through ``vllm_xargs``.
"""

from typing import Annotated, Any

from pydantic import Field

from serve_app.protocol.strict import Strict

Breaker = Annotated[str, Field(min_length=1, max_length=40)]
XARGS = (
    "dry_multiplier",
    "dry_base",
    "dry_allowed_length",
    "dry_penalty_last_n",
    "dry_sequence_breakers",
    "xtc_probability",
    "xtc_threshold",
    "xtc_min_keep",
)
NATIVE = (
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "presence_penalty",
    "frequency_penalty",
    "repetition_penalty",
)
DEFAULT_REPEAT_LAST_N = 64


class SamplingFields(Strict):
    """Every sampler a request (or a model's ``sampling_defaults``) may set."""

    temperature: float | None = Field(None, ge=0, le=2, description="OpenAI; 0 is greedy.")
    top_p: float | None = Field(None, ge=0, le=1, description="OpenAI nucleus sampling.")
    top_k: int | None = Field(None, ge=-1, description="Keep the k likeliest (0 or -1: off).")
    min_p: float | None = Field(None, ge=0, le=1, description="Drop below min_p x the top prob.")
    presence_penalty: float | None = Field(None, ge=-2, le=2, description="OpenAI.")
    frequency_penalty: float | None = Field(None, ge=-2, le=2, description="OpenAI.")
    repetition_penalty: float | None = Field(
        None, gt=0, le=10, description="vLLM: penalty over the whole prompt and output."
    )
    repeat_penalty: float | None = Field(
        None, gt=0, le=10, description="llama.cpp: penalty over the last repeat_last_n tokens."
    )
    repeat_last_n: int | None = Field(
        None, ge=-1, description="Window of repeat_penalty (64; 0 off, -1 whole context)."
    )
    dry_multiplier: float | None = Field(None, ge=0, le=100, description="DRY strength (0 off).")
    dry_base: float | None = Field(None, ge=1, le=10, description="DRY growth per token (1.75).")
    dry_allowed_length: int | None = Field(
        None, ge=0, le=1000, description="Repeats this long go unpenalised (2)."
    )
    dry_penalty_last_n: int | None = Field(
        None, ge=-1, description="Tokens DRY looks back over (-1: the whole context)."
    )
    dry_sequence_breakers: list[Breaker] | None = Field(
        None, min_length=1, max_length=16, description="Strings that stop a DRY match."
    )
    xtc_probability: float | None = Field(None, ge=0, le=1, description="XTC chance (0 off).")
    xtc_threshold: float | None = Field(None, ge=0, le=1, description="XTC top-choice prob.")
    xtc_min_keep: int | None = Field(None, ge=0, description="XTC keeps at least this many.")

    def both_repeat_penalties(self) -> bool:
        """llama.cpp's windowed and vLLM's whole-context penalty exclude each other."""
        return self.repeat_penalty is not None and self.repetition_penalty is not None

    def sampling_payload(self, defaults: "SamplingFields | None") -> dict[str, Any]:
        """vLLM request fields for these samplers, the model's defaults filling unset ones."""
        values = {}
        if defaults is not None:
            values.update(defaults.model_dump(exclude_none=True))
            if "repetition_penalty" in self.model_fields_set:
                values.pop("repeat_penalty", None)
            if "repeat_penalty" in self.model_fields_set:
                values.pop("repetition_penalty", None)
        fields = type(self).model_fields
        values.update({n: getattr(self, n) for n in self.model_fields_set if n in fields})
        values = {k: v for k, v in values.items() if v is not None}
        body = {name: values[name] for name in NATIVE if name in values}
        xargs: dict[str, Any] = {}
        penalty = values.get("repeat_penalty", 1.0)
        last_n = values.get("repeat_last_n", DEFAULT_REPEAT_LAST_N)
        if penalty != 1.0 and last_n == -1:
            body["repetition_penalty"] = penalty  # vLLM's own: the whole context
        elif penalty != 1.0 and last_n > 0:
            xargs.update(repeat_penalty=penalty, repeat_last_n=last_n)
        if values.get("dry_multiplier"):
            xargs.update({k: values[k] for k in XARGS if k.startswith("dry_") and k in values})
        if values.get("xtc_probability"):
            xargs.update({k: values[k] for k in XARGS if k.startswith("xtc_") and k in values})
        if xargs:
            body["vllm_xargs"] = xargs
        return body
