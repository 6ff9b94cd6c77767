"""Plain data that crosses DeploymentHandles between the ingress and the model deployments.

A backend call is a stream of frames. Its first frame decides the HTTP response:

- ``ErrorFrame``: the request failed; the ingress answers with the OpenAI error envelope.
- ``JSONFrame``: the whole (non-streaming) response body.
- ``TextFrame``: the whole body as text (transcripts as ``text``, ``srt``, ``vtt``).
- ``ChunkFrame``: the first of a streamed response's chunks; more follow, and an
  ``ErrorFrame`` may still come mid-stream (sent to the client as an SSE error event).
  A stream may end with a ``UsageFrame`` (what it cost; the ingress does not send it).

A frame's ``usage`` is what the request cost, as counts by name (``USAGE_COUNTS``): LLM
tokens, or seconds of audio. The ingress charges rate limits and records metrics from it.

``DecodedAudio`` is what the audio preprocessor hands the Whisper replicas.
"""

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(slots=True)
class ErrorFrame:
    """An OpenAI-style error: HTTP ``status`` plus the envelope's fields."""

    status: int
    message: str
    type: str = ""
    param: str | None = None
    code: str | None = None
    headers: dict[str, str] | None = None  # e.g. Retry-After

    def __post_init__(self) -> None:
        if not self.type:
            self.type = error_type_for(self.status)

    def envelope(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


USAGE_COUNTS = (
    "prompt_tokens",
    "completion_tokens",
    "reasoning_tokens",
    "cached_tokens",
    "audio_seconds",
)
Usage = dict[str, float]  # name in USAGE_COUNTS -> amount


def token_usage(usage: dict[str, Any] | None) -> Usage:
    """The counts of an OpenAI ``usage`` object (reasoning from either of its spellings)."""
    usage = usage or {}
    details = usage.get("completion_tokens_details") or {}
    prompt_details = usage.get("prompt_tokens_details") or {}
    counts = {
        "prompt_tokens": usage.get("prompt_tokens"),
        "completion_tokens": usage.get("completion_tokens"),
        "reasoning_tokens": details.get("reasoning_tokens") or usage.get("reasoning_tokens"),
        "cached_tokens": prompt_details.get("cached_tokens"),
    }
    return {k: float(v) for k, v in counts.items() if isinstance(v, int | float) and v > 0}


@dataclass(slots=True)
class Charge:
    """What one request used, charged to its key's budgets and the usage ledger.

    ``kind`` is the Usage API's endpoint kind (``completions``, ``embeddings``,
    ``audio_transcriptions``); ``ended`` how the request ended (``completed``; ``cancelled``:
    the engine stopped early because the client went away, the request timed out or was
    cancelled; ``failed``: cut by an error, counts as far as known); ``estimated``: counts
    that are not the engine's (an upstream provider that sent none, a dead replica).
    """

    key: str  # the API key's name ("" when the API runs without keys)
    model: str
    kind: str
    route: str  # the API route (metrics label)
    # Charged once in the ledger: the request id (``<id>/cut`` for what a model replica
    # charges of a call cut short); "" for a charge without one
    id: str = ""
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    reasoning_tokens: int = 0  # part of output_tokens (metrics only)
    audio_seconds: float = 0.0
    ended: str = "completed"
    estimated: bool = False
    batch: bool = False
    at: float = 0.0  # Unix time it was charged at (set by the limiter)

    @property
    def tokens(self) -> int:
        return self.input_tokens + self.output_tokens


@dataclass(slots=True)
class JSONFrame:
    """A complete JSON response body; ``usage`` is what it cost."""

    body: dict[str, Any] = field(default_factory=dict)
    usage: Usage = field(default_factory=dict)
    estimated: bool = False  # ``usage`` is guessed (an upstream provider that sent none)


@dataclass(slots=True)
class TextFrame:
    """A complete plain-text body and its media type; ``usage`` as for ``JSONFrame``."""

    text: str
    media_type: str = "text/plain"
    usage: Usage = field(default_factory=dict)


@dataclass(slots=True)
class UsageFrame:
    """The last frame of a stream: what it cost. Not sent."""

    usage: Usage
    estimated: bool = False  # as ``JSONFrame.estimated``


@dataclass(slots=True)
class ChunkFrame:
    """One streamed event: ``data`` is the JSON text of an SSE ``data:`` line."""

    data: str
    # On a local engine's first chunk: the prompt's tokens. Should the replica die before
    # the stream's usage frame, the ingress charges this plus a token per chunk relayed.
    prompt_tokens: int = 0


Frame = ErrorFrame | JSONFrame | TextFrame | ChunkFrame | UsageFrame


@dataclass(slots=True)
class DecodedAudio:
    """Mono float32 samples at ``sample_rate`` (16 kHz for Whisper)."""

    samples: np.ndarray
    sample_rate: int

    @property
    def duration_s(self) -> float:
        return len(self.samples) / self.sample_rate


def error_type_for(status: int) -> str:
    """OpenAI's error ``type`` for an HTTP status."""
    if status == 429:
        return "rate_limit_error"
    if status >= 500:
        return "server_error"
    return "invalid_request_error"
