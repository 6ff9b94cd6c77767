"""Chat messages and content parts, with OpenAI's rules.

User, system, developer and tool messages need ``content``; tool messages need
``tool_call_id``; assistant messages need ``content`` or ``tool_calls``. ``input_audio`` parts
are transcribed by the ingress before the model sees them; ``image_url`` and ``file`` parts
are refused (text models only), and nothing they name is fetched.
"""

from typing import Annotated, Any, Literal

from pydantic import Field

from serve_app.protocol.strict import Strict, tagged

AUDIO_FORMATS = ("wav", "mp3", "flac", "ogg", "oga", "opus", "webm", "m4a", "mp4", "mpeg", "aac")


class TextPart(Strict):
    type: Literal["text"]
    text: str
    prompt_cache_breakpoint: dict[str, Any] | None = None  # advisory


class ImageURL(Strict):
    url: str
    detail: Literal["auto", "low", "high"] | None = None


class ImagePart(Strict):
    type: Literal["image_url"]
    image_url: ImageURL
    prompt_cache_breakpoint: dict[str, Any] | None = None


class AudioData(Strict):
    """The ``input_audio`` object of an audio part, in chat and in Responses input alike."""

    data: str = Field(description="Base64-encoded audio.")
    format: Literal[AUDIO_FORMATS]  # type: ignore[valid-type]


class AudioPart(Strict):
    type: Literal["input_audio"]
    input_audio: AudioData
    prompt_cache_breakpoint: dict[str, Any] | None = None


class FileRef(Strict):
    file_data: str | None = None
    file_id: str | None = None
    filename: str | None = None


class FilePart(Strict):
    type: Literal["file"]
    file: FileRef
    prompt_cache_breakpoint: dict[str, Any] | None = None


class RefusalPart(Strict):
    type: Literal["refusal"]
    refusal: str


TextParts = Annotated[list[TextPart], Field(min_length=1)]
UserParts = Annotated[
    list[tagged("type", TextPart, ImagePart, AudioPart, FilePart)], Field(min_length=1)
]
AssistantParts = Annotated[list[tagged("type", TextPart, RefusalPart)], Field(min_length=1)]


class SystemMessage(Strict):
    role: Literal["system"]
    content: str | TextParts
    name: str | None = None


class DeveloperMessage(Strict):
    role: Literal["developer"]
    content: str | TextParts
    name: str | None = None


class UserMessage(Strict):
    role: Literal["user"]
    content: str | UserParts
    name: str | None = None


class FunctionCall(Strict):
    name: str
    arguments: str


class ToolCall(Strict):
    id: str
    type: Literal["function"]
    function: FunctionCall


class AssistantMessage(Strict):
    role: Literal["assistant"]
    content: str | AssistantParts | None = None
    tool_calls: list[ToolCall] | None = None
    name: str | None = None
    refusal: str | None = None
    reasoning: str | None = Field(None, description="Earlier reasoning, sent back as is.")
    annotations: list[dict[str, Any]] | None = None  # advisory: OpenAI's URL citations
    audio: None = Field(None, description="Audio replies are not supported.")
    function_call: None = Field(None, description="Deprecated: use tool_calls.")


class ToolMessage(Strict):
    role: Literal["tool"]
    content: str | TextParts
    tool_call_id: str


Message = tagged(
    "role", SystemMessage, DeveloperMessage, UserMessage, AssistantMessage, ToolMessage
)


def audio_parts(messages: list[Any]) -> list[tuple[int, int, AudioPart]]:
    """(message index, part index, part) of every ``input_audio`` part."""
    found = []
    for i, message in enumerate(messages):
        if isinstance(message, UserMessage) and isinstance(message.content, list):
            for j, part in enumerate(message.content):
                if isinstance(part, AudioPart):
                    found.append((i, j, part))
    return found
