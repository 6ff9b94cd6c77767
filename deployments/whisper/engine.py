"""The one module that imports faster-whisper.

Transcriptions run as faster-whisper's batched pipeline (``BatchedInferencePipeline``): a
request's audio is cut into windows of at most 30 s (at speech pauses with the VAD, else
every 30 s), and its windows are decoded one after another by ``decode`` — the deployment's
cross-request batcher, which hands windows of many requests to ``decode_windows`` as one
batch. As in that pipeline, a window is decoded at one temperature (no fallback) and without
the previous window's text as prompt.
"""

import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from faster_whisper import BatchedInferencePipeline, WhisperModel

CHUNK_S = 30  # Whisper's window


@dataclass(frozen=True, slots=True)
class Transcript:
    """What faster-whisper knows before the first segment."""

    language: str
    duration_s: float
    segments: Iterator[dict[str, Any]]


@dataclass(slots=True)
class Window:
    """Up to 30 s of one request's audio, ready for the decoder: log-mel features and what
    faster-whisper's batched ``forward`` needs with them. Windows batch together when they
    share ``key`` (task, language and decoding options)."""

    features: np.ndarray  # (n_mels, 3000)
    metadata: dict[str, Any]  # offset and duration in the request's audio
    tokenizer: Any
    options: Any  # faster-whisper's TranscriptionOptions
    key: tuple


Decode = Callable[[list[Window]], list[list[dict[str, Any]]]]


class _RequestPipeline(BatchedInferencePipeline):
    """faster-whisper's batched pipeline for one request, whose windows go to ``decode``."""

    def __init__(self, model: WhisperModel, decode: Decode) -> None:
        super().__init__(model)
        self.decode = decode

    def forward(self, features, tokenizer, chunks_metadata, options):  # noqa: ANN001, ANN201
        options_key = repr(dataclasses.replace(options, clip_timestamps=None))
        key = (tokenizer.task, tokenizer.language, options_key)
        return self.decode(
            [
                Window(f, meta, tokenizer, options, key)
                for f, meta in zip(features, chunks_metadata, strict=True)
            ]
        )


class WhisperEngine:
    """A faster-whisper model and the decoding options from the config."""

    def __init__(self, source: str, options: dict[str, Any]) -> None:
        self.beam_size = options.get("beam_size", 5)
        self.vad_filter = options.get("vad_filter", True)
        self.model = WhisperModel(
            source,
            device=options.get("device", "cpu"),
            compute_type=options.get("compute_type", "int8"),
            cpu_threads=options.get("cpu_threads", 0),
            local_files_only=True,
        )
        self._decoder = BatchedInferencePipeline(self.model)

    @property
    def multilingual(self) -> bool:
        return self.model.model.is_multilingual

    def transcribe(
        self,
        audio: np.ndarray,
        *,
        task: str,
        language: str | None,
        prompt: str | None,
        temperature: float | None,
        word_timestamps: bool,
        decode: Decode | None = None,
    ) -> Transcript:
        """Prepare a transcription (VAD, windows, features, language); its segments come
        lazily, each group of windows decoded by ``decode`` (default: ``decode_windows``)."""
        rate = self.model.feature_extractor.sampling_rate
        duration = len(audio) / rate
        clips = None
        if not self.vad_filter:  # fixed windows (with the VAD the pipeline cuts at pauses)
            clips = [
                {"start": start, "end": min(start + CHUNK_S, duration)}
                for start in range(0, max(1, int(np.ceil(duration))), CHUNK_S)
            ]
        pipeline = _RequestPipeline(self.model, decode or self.decode_windows)
        segments, info = pipeline.transcribe(
            audio,
            task=task,
            language=language,
            initial_prompt=prompt or None,
            beam_size=self.beam_size,
            temperature=temperature or 0.0,
            vad_filter=self.vad_filter,
            clip_timestamps=clips,
            word_timestamps=word_timestamps,
            without_timestamps=False,  # timestamp tokens: segments within a window
            batch_size=1,  # one window at a time per request: a cancelled one stops between
        )
        return Transcript(info.language, float(info.duration), map(_segment_dict, segments))

    def decode_windows(self, windows: list[Window]) -> list[list[dict[str, Any]]]:
        """Decode windows of any requests: one encoder/decoder batch per group of windows
        sharing a ``key``. Returns each window's segments, in order."""
        results: list[list[dict[str, Any]] | None] = [None] * len(windows)
        groups: dict[tuple, list[int]] = {}
        for i, window in enumerate(windows):
            groups.setdefault(window.key, []).append(i)
        for indices in groups.values():
            first = windows[indices[0]]
            self._decoder.last_speech_timestamp = 0.0
            decoded = self._decoder.forward(
                np.stack([windows[i].features for i in indices]),
                first.tokenizer,
                [windows[i].metadata for i in indices],
                first.options,
            )
            for i, segments in zip(indices, decoded, strict=True):
                results[i] = segments
        return results  # type: ignore[return-value]

    def self_test(self) -> None:
        """Run the encoder on one second of silence: raises if the model is broken."""
        features = self.model.feature_extractor(np.zeros(16_000, dtype=np.float32))
        self.model.encode(features[:, : self.model.feature_extractor.nb_max_frames])

    def check_health(self) -> None:
        """Raise if CTranslate2 no longer holds the model."""
        if not self.model.model.model_is_loaded:
            raise RuntimeError("the Whisper model is not loaded")


def _segment_dict(segment: Any) -> dict[str, Any]:
    words = None
    if segment.words is not None:
        words = [
            {"word": w.word.strip(), "start": _secs(w.start), "end": _secs(w.end)}
            for w in segment.words
        ]
    return {
        "id": segment.id - 1,  # faster-whisper counts from 1, OpenAI from 0
        "seek": segment.seek,
        "start": _secs(segment.start),
        "end": _secs(segment.end),
        "text": segment.text,
        "tokens": list(segment.tokens),
        "temperature": segment.temperature,
        "avg_logprob": segment.avg_logprob,
        "compression_ratio": segment.compression_ratio,
        "no_speech_prob": segment.no_speech_prob,
        "words": words,
    }


def _secs(value: float) -> float:
    return round(float(value), 3)
