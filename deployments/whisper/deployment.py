"""The Whisper deployment: one per configured speech-to-text model (faster-whisper).

faster-whisper is imported in ``__init__`` (through ``deployments.whisper.engine``).
"""

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from ray.serve import metrics

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
        # Exported as ray_whisper_* (README, metrics table).
        self.in_progress = metrics.Gauge(
            "whisper_requests_in_progress",
            description="Requests on this replica, transcribing or waiting for the model.",
            tag_keys=("model",),
        )
        self.realtime_factor = metrics.Histogram(
            "whisper_realtime_factor",
            description="Seconds spent per second of audio, per finished request.",
            boundaries=[0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 2, 5],
            tag_keys=("model",),
        )
        for metric in (self.in_progress, self.realtime_factor):
            metric.set_default_tags({"model": model_id})
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
        self.in_progress.set(self.active)
        started = time.monotonic()
        try:
            async for frame in self._transcribe(audio, params):
                yield frame
            if audio.duration_s > 0:
                self.realtime_factor.observe((time.monotonic() - started) / audio.duration_s)
        finally:
            self.active -= 1
            self.in_progress.set(self.active)

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
            yield UsageFrame(formats.audio_usage(transcript.duration_s))
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
