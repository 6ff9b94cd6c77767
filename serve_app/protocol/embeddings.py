"""OpenAI's embeddings request, strictly: every field does what it says or is a 400 naming it.

``input`` is a string, an array of strings, an array of token ids or an array of those
(at most 2048 inputs, none empty). ``truncate_prompt_tokens`` is our extension (vLLM's
name): an input longer than the model's context is a 400 unless the request sets it.
"""

from typing import Annotated, Any, Literal

from pydantic import Field

from serve_app.errors import APIError
from serve_app.protocol.strict import Strict

MAX_INPUTS = 2048  # OpenAI's limit on the inputs of one request
# Token ids are checked in ``check`` (a negative one is named there, not lost in the union).
Input = (
    str
    | Annotated[list[str], Field(min_length=1, max_length=MAX_INPUTS)]
    | Annotated[list[int], Field(min_length=1, max_length=MAX_INPUTS)]
    | Annotated[
        list[Annotated[list[int], Field(min_length=1)]],
        Field(min_length=1, max_length=MAX_INPUTS),
    ]
)


class EmbeddingRequest(Strict):
    model: str = Field(min_length=1, max_length=256)
    input: Input
    encoding_format: Literal["float", "base64"] | None = Field(
        None, description="float (default) or base64: little-endian float32, as OpenAI's."
    )
    dimensions: int | None = Field(
        None, ge=1, description="Shorter vectors, for Matryoshka models; the model's own size."
    )
    user: str | None = Field(None, max_length=256)  # advisory
    truncate_prompt_tokens: int | None = Field(
        None,
        ge=-1,
        description="Extension: keep the first N tokens of each input (-1: as many as the "
        "model's context holds) instead of refusing a longer input.",
    )

    def check(self) -> None:
        """Rules pydantic cannot say; 400 naming the field."""
        if self.input == "":
            raise APIError(400, "'input' cannot be an empty string.", param="input")
        if isinstance(self.input, list):
            for i, item in enumerate(self.input):
                if item == "":
                    raise APIError(
                        400, f"'input[{i}]' cannot be an empty string.", param=f"input[{i}]"
                    )
                ids = item if isinstance(item, list) else [item]
                for j, token in enumerate(ids):
                    if isinstance(token, int) and token < 0:
                        where = f"input[{i}][{j}]" if isinstance(item, list) else f"input[{i}]"
                        raise APIError(400, f"'{where}' is not a token id (< 0).", param=where)
        if self.truncate_prompt_tokens == 0:
            raise APIError(
                400,
                "'truncate_prompt_tokens' must be -1 (the model's context) or at least 1.",
                param="truncate_prompt_tokens",
            )

    def to_backend(self) -> dict[str, Any]:
        """The body the embedding replica runs (vLLM's fields; ``user`` stays here)."""
        fields = ("input", "encoding_format", "dimensions", "truncate_prompt_tokens")
        return {name: getattr(self, name) for name in fields if getattr(self, name) is not None}
