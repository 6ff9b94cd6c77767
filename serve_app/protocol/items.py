"""Responses API items: what ``input`` (and a conversation) holds, as stored, and as chat.

Items are ``message`` (input or output content parts), ``function_call``,
``function_call_output`` and ``reasoning``; ``stored_items`` gives them ids and the shapes
OpenAI lists them in, and ``to_messages`` turns stored items (history and input) into the
chat messages the model runs.

An ``input_audio`` part is transcribed once. The ingress keeps its transcript in the stored
part itself, under the private key ``TRANSCRIPT`` (``keep_transcripts``), so the text lives and
goes with the audio it came from (deleted with its response or conversation item, no table of
its own to expire) and each later turn of the chain or conversation sends that text instead
of the audio (``to_messages``): no second Whisper call, no second charge of its audio seconds.
No request model accepts the key (an unknown field is a 400), so a client cannot set it, and
``public_items`` strips it from every item a client gets back, which stays as it was given.
"""

import uuid
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field

from serve_app.errors import APIError
from serve_app.protocol.messages import AudioData
from serve_app.protocol.strict import Strict, tagged

ItemStatus = Literal["in_progress", "completed", "incomplete"]
CallId = Annotated[str, Field(min_length=1, max_length=64)]


def new_id(prefix: str) -> str:
    """An id as OpenAI spells them: ``resp_``, ``msg_``, ``fc_``, ``rs_`` + 48 hex digits."""
    return f"{prefix}_{uuid.uuid4().hex}{uuid.uuid4().hex[:16]}"


class InputText(Strict):
    type: Literal["input_text"]
    text: str
    prompt_cache_breakpoint: dict[str, Any] | None = None  # advisory


class InputImage(Strict):
    type: Literal["input_image"]
    image_url: str | None = None
    file_id: str | None = None
    detail: str | None = None


class InputFile(Strict):
    type: Literal["input_file"]
    file_id: str | None = None
    file_data: str | None = None
    file_url: str | None = None
    filename: str | None = None


class InputAudio(Strict):
    type: Literal["input_audio"]
    input_audio: AudioData


class OutputText(Strict):
    type: Literal["output_text"]
    text: str
    annotations: list[dict[str, Any]] | None = None
    logprobs: list[dict[str, Any]] | None = None


class Refusal(Strict):
    type: Literal["refusal"]
    refusal: str


InputPart = tagged("type", InputText, InputImage, InputFile, InputAudio)
AnyPart = tagged("type", InputText, InputImage, InputFile, InputAudio, OutputText, Refusal)


def _message_type(value: Any) -> Any:
    """An item with a ``role`` and no ``type`` is a message (OpenAI's "easy" input message)."""
    if isinstance(value, dict) and "role" in value and "type" not in value:
        return {**value, "type": "message"}
    return value


class MessageItem(Strict):
    type: Literal["message"]
    role: Literal["user", "assistant", "system", "developer"]
    content: str | Annotated[list[AnyPart], Field(min_length=1)]
    id: str | None = None
    status: ItemStatus | None = None
    phase: str | None = None  # advisory


class FunctionCallItem(Strict):
    type: Literal["function_call"]
    call_id: CallId
    name: str = Field(min_length=1, max_length=128)
    arguments: str
    id: str | None = None
    status: ItemStatus | None = None


class FunctionCallOutputItem(Strict):
    type: Literal["function_call_output"]
    call_id: CallId
    output: str | Annotated[list[InputPart], Field(min_length=1)]
    id: str | None = None
    status: ItemStatus | None = None


class ReasoningText(Strict):
    type: Literal["reasoning_text"]
    text: str


class SummaryText(Strict):
    type: Literal["summary_text"]
    text: str


class ReasoningItem(Strict):
    type: Literal["reasoning"]
    summary: list[SummaryText] = Field(default_factory=list)
    content: list[ReasoningText] | None = None
    encrypted_content: str | None = None
    id: str | None = None
    status: ItemStatus | None = None


InputItem = Annotated[
    tagged("type", MessageItem, FunctionCallItem, FunctionCallOutputItem, ReasoningItem),
    BeforeValidator(_message_type),
]


def check_items(items: list[Any], field: str) -> None:
    """400 naming the item (``input[2].content[0]``) for content no model here accepts."""
    for i, item in enumerate(items):
        if isinstance(item, ReasoningItem) and item.encrypted_content is not None:
            raise APIError(
                400, "Encrypted reasoning is not supported.",
                param=f"{field}[{i}].encrypted_content",
            )  # fmt: skip
        if not isinstance(item, MessageItem) or isinstance(item.content, str):
            continue
        for j, part in enumerate(item.content):
            param = f"{field}[{i}].content[{j}]"
            if isinstance(part, InputImage | InputFile):
                kind = "image" if isinstance(part, InputImage) else "file"
                raise APIError(
                    400,
                    f"The models here accept text and audio only; {kind} inputs are not supported.",
                    param=param,
                    code="unsupported_content",
                )
            assistant = item.role == "assistant"
            if assistant and isinstance(part, InputAudio):
                raise APIError(400, "Assistant messages cannot carry audio.", param=param)
            if not assistant and isinstance(part, OutputText | Refusal):
                raise APIError(
                    400,
                    f"Content of type '{part.type}' is for assistant messages only.",
                    param=param,
                )


def stored_items(items: list[Any]) -> list[dict[str, Any]]:
    """Input items as they are stored and listed: content as parts, each item with an id
    (kept if the client gave one) and a status."""
    stored = []
    for item in items:
        item = item.model_dump(by_alias=True, exclude_none=True)
        if item["type"] == "message" and isinstance(item["content"], str):
            kind = "output_text" if item["role"] == "assistant" else "input_text"
            item["content"] = [{"type": kind, "text": item["content"]}]
        for part in item.get("content") or () if item["type"] == "message" else ():
            if part["type"] == "output_text":
                part.setdefault("annotations", [])
                part.setdefault("logprobs", [])
        item.setdefault("id", new_id(_ID_PREFIX[item["type"]]))
        item.setdefault("status", "completed")
        stored.append(item)
    return stored


TRANSCRIPT = "_transcript"  # a stored input_audio part's transcript (see the module's doc)


def untranscribed(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The ``input_audio`` parts of ``items`` with no transcript yet, in the order
    ``to_messages`` sends them to chat (as ``messages.audio_parts`` finds them there)."""
    return [
        part
        for item in items
        if item["type"] == "message" and item["role"] != "assistant"
        for part in item["content"]
        if part["type"] == "input_audio" and TRANSCRIPT not in part
    ]


def keep_transcripts(parts: list[dict[str, Any]], texts: list[str | None]) -> None:
    """Put each transcript on its stored part (``untranscribed``'s, in its order); None (a
    part a model took as audio) leaves the part as it is."""
    for part, text in zip(parts, texts, strict=True):
        if text is not None:
            part[TRANSCRIPT] = text


def public_items(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Stored items as clients get them back: as they were given, without the transcripts
    kept on their ``input_audio`` parts."""
    shown = []
    for item in items:
        parts = item.get("content") if item["type"] == "message" else None
        if any(TRANSCRIPT in part for part in parts or ()):
            parts = [{k: v for k, v in part.items() if k != TRANSCRIPT} for part in parts]
            item = {**item, "content": parts}
        shown.append(item)
    return shown


_ID_PREFIX = {
    "message": "msg",
    "function_call": "fc",
    "function_call_output": "fco",
    "reasoning": "rs",
}


# Chat's names of fields that a Responses request names otherwise (for 400s from chat).
def _text(content: list[dict[str, Any]]) -> str:
    return "".join(part.get("text", part.get("refusal", "")) for part in content)


def to_messages(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Stored items (input and output, in order) as chat messages: consecutive function calls
    become one assistant message's ``tool_calls``; a reasoning item goes to the next
    assistant message's ``reasoning`` (one that no assistant turn follows, as when the output
    was cut short while reasoning, is dropped); function call outputs become tool messages."""
    messages: list[dict[str, Any]] = []
    reasoning: list[str] = []

    def assistant() -> dict[str, Any]:
        last = messages[-1] if messages else None
        if last is not None and last["role"] == "assistant" and not reasoning:
            return last
        message: dict[str, Any] = {"role": "assistant"}
        if reasoning:
            message["reasoning"] = "\n".join(reasoning)
            reasoning.clear()
        messages.append(message)
        return message

    for item in items:
        kind = item["type"]
        if kind == "reasoning":
            reasoning.append(_text(item.get("content") or item.get("summary") or []))
        elif kind == "function_call":
            message = assistant()
            message.setdefault("tool_calls", []).append(
                {
                    "id": item["call_id"],
                    "type": "function",
                    "function": {"name": item["name"], "arguments": item["arguments"]},
                }
            )
        elif kind == "function_call_output":
            output = item["output"]
            text = output if isinstance(output, str) else _text(output)
            messages.append({"role": "tool", "tool_call_id": item["call_id"], "content": text})
            reasoning.clear()
        elif item["role"] == "assistant":
            text = _text(item["content"])
            message = assistant()
            if message.get("tool_calls") or "content" in message:
                message = {"role": "assistant"}
                messages.append(message)
            message["content"] = text
        else:
            parts = item["content"]
            if any(part["type"] == "input_audio" for part in parts):
                content: Any = [_user_part(part) for part in parts]
            else:
                content = _text(parts)
            messages.append({"role": item["role"], "content": content})
            reasoning.clear()
    return messages


def _user_part(part: dict[str, Any]) -> dict[str, Any]:
    """A content part of a message with audio, as chat takes it: an ``input_audio`` part
    stays audio (to be transcribed) unless it has its transcript, which goes as the text part
    that replaced it when it was first transcribed."""
    if part["type"] != "input_audio":
        return {"type": "text", "text": part["text"]}
    if TRANSCRIPT in part:
        return {"type": "text", "text": part[TRANSCRIPT]}
    return {"type": "input_audio", "input_audio": part["input_audio"]}
