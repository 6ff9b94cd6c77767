"""The Whisper deployment: one per configured speech-to-text model (faster-whisper).

faster-whisper is imported in ``__init__`` (through ``deployments.whisper.engine``).

Concurrent requests share the model through continuous batching (``Batcher``): each
request walks its audio (VAD, features, one 30-second window after another: where a window
starts depends on how the last one decoded) in a thread of its own and queues each window
as it comes; whenever the model (one thread) is free, it decodes every queued window,
up to ``max_batch_size``, in one call. Windows that arrive while the model is busy batch up
without any wait. (Serve's ``@serve.batch`` forms a batch from what arrives within its wait
window, even while the model is still busy with the previous one: with Whisper's second-long
calls its batches stayed at one window.)
"""

import asyncio
import collections
import concurrent.futures
import logging
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

from ray.serve import metrics

from deployments.common.contracts import DecodedAudio, ErrorFrame, Frame, UsageFrame
from deployments.common.usage import Account, metered
from deployments.whisper import formats

logger = logging.getLogger("ray.serve.deployments.whisper")


class Batcher:
    """Continuous batching of windows onto one model thread (see the module docstring)."""

    def __init__(
        self,
        run: Any,
        max_batch_size: int,
        wait_s: float,
        on_batch: Any = None,
        remembered: int = 256,
    ) -> None:
        self.run = run  # windows -> results, blocking (in the model thread)
        self.max_batch_size = max_batch_size
        self.wait_s = wait_s  # an idle model waits this long for a batch to fill
        self.on_batch = on_batch
        # window, result, request, called with the window when its decode starts
        self.queue: list[tuple[Any, asyncio.Future, str | None, Any]] = []
        # Per request id, the last ``remembered`` requests to have a window decoded:
        # {"windows": handed to the model, "shared": of them, in a call that also held
        # windows of another request}.
        self.requests: dict[str, dict[str, int]] = {}
        self.remembered = remembered
        self.arrived = asyncio.Event()
        self.model_thread = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="whisper-model"
        )
        self.worker: asyncio.Task | None = None
        self.busy = False

    async def submit(self, window: Any, request: str | None = None, started: Any = None) -> Any:
        """Decode ``window`` (of the request with id ``request``: counted in ``requests``;
        ``None``: of a request of its own, not counted) in the next batch; cancelling drops
        it if not started. ``started(window)`` is called when its model call starts (it is
        decoded then, whether its caller waits for it or not)."""
        future = asyncio.get_running_loop().create_future()
        self.queue.append((window, future, request, started))
        self.arrived.set()
        if self.worker is None:
            self.worker = asyncio.create_task(self._work())
        return await future

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self.arrived.wait()
            self.arrived.clear()
            if self.wait_s and len(self.queue) < self.max_batch_size:
                await asyncio.sleep(self.wait_s)
            while self.queue:
                batch = [item for item in self.queue[: self.max_batch_size] if not item[1].done()]
                del self.queue[: self.max_batch_size]
                if not batch:
                    continue
                windows = [window for window, _, _, _ in batch]
                self._count([request for _, _, request, _ in batch])
                if self.on_batch:
                    self.on_batch(windows)
                for window, _, _, started in batch:
                    if started:
                        started(window)
                self.busy = True
                try:
                    results = await loop.run_in_executor(self.model_thread, self.run, windows)
                except Exception as exc:  # every caller of the batch gets the error
                    results = [exc] * len(batch)
                finally:
                    self.busy = False
                for (_, future, _, _), result in zip(batch, results, strict=True):
                    if future.done():
                        continue
                    if isinstance(result, Exception):
                        future.set_exception(result)
                    else:
                        future.set_result(result)

    def _count(self, owners: list[str | None]) -> None:
        """Add a model call's windows, by the request each belongs to, to ``requests``."""
        for request, windows in collections.Counter(owners).items():
            if request is None:
                continue
            counts = self.requests.pop(request, None) or {"windows": 0, "shared": 0}
            counts["windows"] += windows
            if windows < len(owners):  # the call held windows of another request too
                counts["shared"] += windows
            self.requests[request] = counts  # the most recent last
        while len(self.requests) > self.remembered:
            del self.requests[next(iter(self.requests))]


class WhisperDeployment:
    """Transcribes and translates decoded audio; renders OpenAI's response formats."""

    def __init__(self, model_id: str, source: str, engine_options: dict[str, Any]) -> None:
        from deployments.whisper.engine import WhisperEngine  # noqa: PLC0415 - replicas only

        self.model_id = model_id
        self.active = 0
        self.windows_decoded = 0
        self.mixed_batches = 0
        self.batch_sizes: dict[int, int] = {}  # windows per model call -> calls
        self._request_threads = concurrent.futures.ThreadPoolExecutor(
            max_workers=64, thread_name_prefix="whisper-request"
        )
        # Exported as ray_whisper_* (README, metrics table).
        self.in_progress = metrics.Gauge(
            "whisper_requests_in_progress",
            description="Requests on this replica, transcribing or waiting for the model.",
            tag_keys=("model",),
        )
        self.batch_size = metrics.Histogram(
            "whisper_batch_size",
            description="30-second windows decoded per model call (from any requests).",
            boundaries=[1, 2, 4, 8, 16, 32, 64],
            tag_keys=("model",),
        )
        self.realtime_factor = metrics.Histogram(
            "whisper_realtime_factor",
            description="Seconds spent per second of audio, per finished request.",
            boundaries=[0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 2, 5],
            tag_keys=("model",),
        )
        for metric in (self.in_progress, self.batch_size, self.realtime_factor):
            metric.set_default_tags({"model": model_id})
        self.engine = WhisperEngine(source, engine_options)
        self.engine.self_test()
        self.batcher = Batcher(
            self.engine.decode_windows,
            engine_options.get("max_batch_size", 8),
            engine_options.get("batch_wait_timeout_s", 0.0),
            self._count_batch,
        )
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
        self,
        audio: DecodedAudio | ErrorFrame,
        params: dict[str, Any],
        account: Account | None = None,
    ) -> AsyncIterator[Frame]:
        """Transcribe (``task="transcribe"``) or translate ``audio``; yields frames.

        ``audio`` is the preprocessor's result (passed on as a DeploymentResponse). Yields an
        ``ErrorFrame``; or one ``JSONFrame``/``TextFrame`` in ``params["response_format"]``;
        or, with ``params["stream"]``, a ``transcript.text.delta`` chunk per segment and a
        final ``transcript.text.done`` carrying the full text. A request's 30-second windows
        decode one after another (each in a batch with other requests' windows), so a
        cancelled call stops between windows. ``params["request_id"]`` (the ingress's request
        id, optional) names the request in ``stats()["requests"]``. A call cut short charges
        ``account`` the audio up to the end of its last window whose decode had started.
        """
        refusal = self._refuse(params) if not isinstance(audio, ErrorFrame) else audio
        if refusal is not None:
            yield refusal
            return
        self.active += 1
        self.in_progress.set(self.active)
        started = time.monotonic()
        decoded = [0.0]  # how far into the audio its decoded windows reach

        def used() -> dict[str, float]:
            return formats.audio_usage(min(decoded[0], audio.duration_s))

        try:
            frames = self._transcribe(audio, params, decoded)
            async for frame in metered(frames, account, self.model_id, used):
                yield frame
            if audio.duration_s > 0:
                self.realtime_factor.observe((time.monotonic() - started) / audio.duration_s)
        finally:
            self.active -= 1
            self.in_progress.set(self.active)

    def _count_batch(self, windows: list[Any]) -> None:  # engine.Window
        size = len(windows)
        self.batch_sizes[size] = self.batch_sizes.get(size, 0) + 1
        self.windows_decoded += size
        # Windows of different tasks, languages or options: one model call per kind.
        self.mixed_batches += len({window.key for window in windows}) > 1
        self.batch_size.observe(size)

    async def _transcribe(
        self, audio: DecodedAudio, params: dict[str, Any], decoded: list[float]
    ) -> AsyncIterator[Frame]:
        loop = asyncio.get_running_loop()
        batcher, request_id = self.batcher, params.get("request_id")
        pending: set[concurrent.futures.Future] = set()
        cancelled = threading.Event()  # the call is over: the walk submits no more windows

        def decode(windows: list[Any]) -> list[Any]:
            """In this request's thread: wait for the batcher to decode ``windows``."""

            async def decode_all() -> list[Any]:
                calls = (batcher.submit(w, request_id, reached) for w in windows)
                return list(await asyncio.gather(*calls))

            if cancelled.is_set():
                raise concurrent.futures.CancelledError
            future = asyncio.run_coroutine_threadsafe(decode_all(), loop)
            pending.add(future)
            if cancelled.is_set():  # set after the check above, maybe before ``pending`` was read
                future.cancel()
            try:
                return future.result()
            finally:
                pending.discard(future)

        def reached(window: Any) -> None:
            """A window's decode started: charged, should the call be cut short (windows
            overlap: faster-whisper's seek)."""
            decoded[0] = max(decoded[0], window.offset_s + window.duration_s)

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
        finally:  # cancelled: windows still queued for the batcher are dropped, none follow
            cancelled.set()
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
        """Transcriptions in progress, whether the model is decoding, 30-second windows handed
        to the model, the batch sizes reached (windows per call -> calls), the batches that
        held windows of different kinds (task, language, options) on this replica, and per
        request id (the last 256 requests) ``{"windows", "shared"}``: its windows handed to
        the model, and how many of them went in a call that also held another request's."""
        return {
            "active": self.active,
            "decoding": self.batcher.busy,
            "windows_decoded": self.windows_decoded,
            "mixed_batches": self.mixed_batches,
            "batch_sizes": dict(sorted(self.batch_sizes.items())),
            "requests": {request: dict(n) for request, n in self.batcher.requests.items()},
        }

    async def ready(self) -> str:
        """Return the model id if the model is loaded (raises otherwise)."""
        self.engine.check_health()
        return self.model_id

    async def check_health(self) -> None:
        """Serve's periodic health check: raises if the model is no longer loaded."""
        self.engine.check_health()
