"""The Whisper deployment: one per configured speech-to-text model (faster-whisper).

faster-whisper is imported in ``__init__`` (through ``deployments.whisper.engine``).
"""

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

from deployments.common.contracts import DecodedAudio, ErrorFrame, Frame, UsageFrame
from deployments.whisper import formats

logger = logging.getLogger("ray.serve.deployments.whisper")


class WhisperDeployment:
    """Transcribes and translates decoded audio; renders OpenAI's response formats."""

    def __init__(self, model_id: str, source: str, engine_options: dict[str, Any]) -> None:
        from deployments.whisper.engine import WhisperEngine  # noqa: PLC0415 - replicas only

        self.model_id = model_id
        self.active = 0
        self.segments_decoded = 0
        self.engine = WhisperEngine(source, engine_options)
        self.engine.self_test()
        logger.info("Whisper %s ready (multilingual: %s)", model_id, self.engine.multilingual)

    def _refuse(self, params: dict[str, Any]) -> ErrorFrame | None:
        if self.engine.multilingual:
            return None
        if params["task"] == "translate":
            return ErrorFrame(
                400,
                f"The model '{self.model_id}' is English-only and cannot translate; "
                "use a multilingual model.",
                param="model",
            )
        if params.get("language") not in (None, "en"):
            return ErrorFrame(
                400, f"The model '{self.model_id}' only understands English.", param="language"
            )
        return None

    async def transcribe(
        self, audio: DecodedAudio | ErrorFrame, params: dict[str, Any]
    ) -> AsyncIterator[Frame]:
        """Transcribe (``task="transcribe"``) or translate ``audio``; yields frames.

        ``audio`` is the preprocessor's result (passed on as a DeploymentResponse). Yields an
        ``ErrorFrame``; or one ``JSONFrame``/``TextFrame`` in ``params["response_format"]``;
        or, with ``params["stream"]``, a ``transcript.text.delta`` chunk per segment and a
        final ``transcript.text.done`` carrying the full text. Segments decode one at a time
        in a worker thread, so a cancelled call stops between segments.
        """
        refusal = self._refuse(params) if not isinstance(audio, ErrorFrame) else audio
        if refusal is not None:
            yield refusal
            return
        self.active += 1
        try:
            async for frame in self._transcribe(audio, params):
                yield frame
        finally:
            self.active -= 1

    async def _transcribe(
        self, audio: DecodedAudio, params: dict[str, Any]
    ) -> AsyncIterator[Frame]:
        granularities = params.get("timestamp_granularities") or []
        transcript = await asyncio.to_thread(
            self.engine.transcribe,
            audio.samples,
            task=params["task"],
            language=params.get("language"),
            prompt=params.get("prompt"),
            temperature=params.get("temperature"),
            word_timestamps="word" in granularities,
        )
        segments = []
        while (segment := await asyncio.to_thread(next, transcript.segments, None)) is not None:
            self.segments_decoded += 1
            if params.get("stream"):
                text = segment["text"] if segments else segment["text"].lstrip()
                yield formats.delta_event(text)
            segments.append(segment)
        if params.get("stream"):
            yield formats.done_event(formats.full_text(segments))
            yield UsageFrame(transcript.duration_s)
            return
        yield formats.render(
            params["response_format"],
            params["task"],
            transcript.language,
            transcript.duration_s,
            segments,
            granularities,
        )

    async def stats(self) -> dict[str, int]:
        """Transcriptions in progress and segments decoded so far on this replica."""
        return {"active": self.active, "segments_decoded": self.segments_decoded}

    async def ready(self) -> str:
        """Return the model id if the model is loaded (raises otherwise)."""
        self.engine.check_health()
        return self.model_id

    async def check_health(self) -> None:
        """Serve's periodic health check: raises if the model is no longer loaded."""
        self.engine.check_health()
