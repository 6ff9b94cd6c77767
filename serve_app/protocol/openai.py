"""OpenAI request bodies as the ingress checks them.

The ingress validates what it must understand (the model id, streaming, the types and ranges
of the common sampling parameters) and lets every other field through (``extra="allow"``):
the LLM deployment hands the whole body to vLLM's own protocol models.
"""

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

StopField = str | Annotated[list[str], Field(max_length=16)] | None


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")

    include_usage: bool | None = None


class ChatMessage(BaseModel):
    """A chat message; the role must be one OpenAI defines, the rest is vLLM's to check."""

    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]


class GenerationRequest(BaseModel):
    """Fields common to chat and legacy completions."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)

    model: str = Field(min_length=1, max_length=256)
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    max_tokens: int | None = Field(None, ge=1)
    n: int | None = Field(None, ge=1, le=128)
    stop: StopField = None
    seed: int | None = None
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)

    def to_backend(self) -> dict[str, Any]:
        """The body as the client sent it (unset fields stay unset)."""
        return self.model_dump(exclude_unset=True)


class ChatCompletionRequest(GenerationRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)


class CompletionRequest(GenerationRequest):
    prompt: str | list[str] | list[int] | list[list[int]]
