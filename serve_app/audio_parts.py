"""``input_audio`` content parts for text LLMs: transcribe each part and put the text in its place.

Each part's base64 audio goes through the audio preprocessor pool to the model's Whisper
deployment (its ``audio_model``, else ``audio.default_model``), exactly as an upload to
``/v1/audio/transcriptions`` does, with the same size limit. The parts of a request are
transcribed concurrently; the first failure answers the request with a 4xx naming the part.
"""

import asyncio
import binascii
from collections.abc import Callable
from typing import Any

from deployments.common.contracts import ErrorFrame, JSONFrame, Usage
from serve_app.dispatch import first_frame
from serve_app.errors import APIError
from serve_app.protocol.messages import AudioPart, TextPart, audio_parts
from serve_app.registry import ModelRegistry, ServedModel
from serve_app.uploads import too_large

TRANSCRIBE = {"task": "transcribe", "response_format": "json", "stream": False}


def stt_model_for(models: ModelRegistry, llm: ServedModel) -> ServedModel:
    name = llm.config.audio_model
    model = models.lookup(name) if name else models.default_stt
    if model is None:
        raise APIError(
            400,
            "input_audio parts need a speech-to-text model, and none is configured.",
            code="unsupported_content",
        )
    return model


async def transcribe_parts(
    models: ModelRegistry,
    llm: ServedModel,
    messages: list[Any],
    request_id: str,
    on_usage: Callable[[Usage], None] | None = None,
) -> None:
    """Replace every ``input_audio`` part of ``messages`` by a text part with its transcript."""
    found = audio_parts(messages)
    if not found:
        return
    stt = stt_model_for(models, llm)
    limits = models.config.limits
    max_bytes = models.config.audio.max_upload_bytes

    async def transcribe(i: int, j: int, part: AudioPart) -> None:
        param = f"messages[{i}].content[{j}].input_audio.data"
        if len(part.input_audio.data) > (max_bytes + 2) // 3 * 4:  # base64 of max_bytes
            error = too_large(max_bytes, len(part.input_audio.data) * 3 // 4)
            error.frame.param = param
            raise error
        try:
            data = binascii.a2b_base64(part.input_audio.data, strict_mode=True)
        except (binascii.Error, ValueError):
            raise APIError(400, "The audio data is not valid base64.", param=param) from None

        def call() -> Any:
            decoded = models.preprocessor.decode.remote(data)
            params = {**TRANSCRIBE, "request_id": request_id}
            return stt.handle.options(stream=True).transcribe.remote(decoded, params)

        frame = await first_frame(
            call,
            request_id,
            limits.request_timeout_s,
            limits.retry_after_s,
            needs=(models.preprocessor, stt.handle),
        )
        if isinstance(frame, ErrorFrame):
            raise APIError(frame.status, frame.message, param=param, code=frame.code)
        if not isinstance(frame, JSONFrame):
            raise APIError(500, f"Unexpected transcription result (request id: {request_id}).")
        if on_usage:
            on_usage(frame.usage)
        messages[i].content[j] = TextPart(type="text", text=frame.body["text"])

    await asyncio.gather(*(transcribe(i, j, part) for i, j, part in found))
