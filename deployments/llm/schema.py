"""Shape vLLM's OpenAI objects into OpenAI's published schemas.

vLLM adds extension fields and serialises unset optional ones as ``null`` (for example
``"service_tier": null`` or ``"prompt_tokens_details": null``), which OpenAI's schemas and
strict clients reject. We drop ``null`` everywhere except in the few fields OpenAI defines
as present-but-nullable.
"""

from typing import Any

from pydantic import ValidationError

from deployments.common.contracts import ErrorFrame
from deployments.common.errors import describe_validation_errors

# Fields OpenAI's schemas require even when null (choices, messages, deltas, logprobs).
KEEP_NULL = frozenset({"content", "refusal", "logprobs", "finish_reason"})


def drop_nulls(value: Any) -> Any:
    """Recursively remove ``None`` values, except for keys in ``KEEP_NULL``."""
    if isinstance(value, dict):
        return {k: drop_nulls(v) for k, v in value.items() if v is not None or k in KEEP_NULL}
    if isinstance(value, list):
        return [drop_nulls(v) for v in value]
    return value


def validation_error(exc: ValidationError) -> ErrorFrame:
    """A 400 frame for a request body vLLM's protocol models rejected."""
    message, param = describe_validation_errors(exc.errors(include_url=False))
    return ErrorFrame(400, message, param=param)
