"""The Whisper deployment: one per configured speech-to-text model (faster-whisper).

faster-whisper is imported in ``__init__`` (through ``deployments.whisper.engine``).

Concurrent requests share the model through Serve's batching (``@serve.batch``): each
request prepares its audio (VAD, 30-second windows, features) in a thread of its own, and
every window waits for ``_decode``, which hands the windows of all requests that arrived
together (up to ``max_batch_size``, waiting at most ``batch_wait_timeout_s`` for more) to the
model as one batch, in the model's one thread.
"""

import asyncio
import concurrent.futures
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from ray import serve
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
        self.decoding = 0  # model calls running
        self.windows_decoded = 0
        self.batch_sizes: dict[int, int] = {}  # windows per model call -> calls
        self._request_threads = concurrent.futures.ThreadPoolExecutor(
            max_workers=64, thread_name_prefix="whisper-request"
        )
        self._model_thread = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="whisper-model"
        )
        self._decode.set_max_batch_size(engine_options.get("max_batch_size", 8))
        self._decode.set_batch_wait_timeout_s(engine_options.get("batch_wait_timeout_s", 0.01))
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

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
    async def _decode(self, windows: list[Any]) -> list[list[dict[str, Any]]]:
        """Windows of any requests, decoded together (sizes set from the config)."""
        self.batch_sizes[len(windows)] = self.batch_sizes.get(len(windows), 0) + 1
        loop = asyncio.get_running_loop()
        self.decoding += 1
        try:
            decoded = await loop.run_in_executor(
                self._model_thread, self.engine.decode_windows, windows
            )
        finally:
            self.decoding -= 1
        self.windows_decoded += len(windows)
        return decoded

    async def _transcribe(
        self, audio: DecodedAudio, params: dict[str, Any]
    ) -> AsyncIterator[Frame]:
        loop = asyncio.get_running_loop()
        pending: set[concurrent.futures.Future] = set()

        def decode(windows: list[Any]) -> list[list[dict[str, Any]]]:
            """In this request's thread: wait for the batcher to decode ``windows``."""

            async def decode_all() -> list[list[dict[str, Any]]]:
                return list(await asyncio.gather(*(self._decode(w) for w in windows)))

            future = asyncio.run_coroutine_threadsafe(decode_all(), loop)
            pending.add(future)
            try:
                return future.result()
            finally:
                pending.discard(future)

        granularities = params.get("timestamp_granularities") or []
        try:
            transcript = await loop.run_in_executor(
                self._request_threads,
                lambda: self.engine.transcribe(
                    audio.samples,
                    task=params["task"],
                    language=params.get("language"),
                    prompt=params.get("prompt"),
                    temperature=params.get("temperature"),
                    word_timestamps="word" in granularities,
                    decode=decode,
                ),
            )
            segments = []
            while True:
                segment = await loop.run_in_executor(
                    self._request_threads, next, transcript.segments, None
                )
                if segment is None:
                    break
                if params.get("stream"):
                    text = segment["text"] if segments else segment["text"].lstrip()
                    yield formats.delta_event(text)
                segments.append(segment)
        finally:  # cancelled: windows still queued for the batcher are dropped
            for future in list(pending):
                future.cancel()
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

    async def stats(self) -> dict[str, Any]:
        """Transcriptions in progress, model calls running, 30-second windows decoded and the
        batch sizes reached (windows per model call -> calls) on this replica."""
        return {
            "active": self.active,
            "decoding": self.decoding,
            "windows_decoded": self.windows_decoded,
            "batch_sizes": dict(sorted(self.batch_sizes.items())),
        }

    async def ready(self) -> str:
        """Return the model id if the model is loaded (raises otherwise)."""
        self.engine.check_health()
        return self.model_id

    async def check_health(self) -> None:
        """Serve's periodic health check: raises if the model is no longer loaded."""
        self.engine.check_health()
