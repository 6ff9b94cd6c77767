"""The one module that imports faster-whisper.

Transcriptions run as faster-whisper's batched pipeline (``BatchedInferencePipeline``): a
request's audio is cut into windows of at most 30 s (at speech pauses with the VAD, else
every 30 s), and its windows are decoded one after another by ``decode``: the deployment's
batcher, which hands the windows of concurrent requests to ``decode_windows`` as one batch.
As in that pipeline, a window is decoded at one temperature (no fallback) and without the
previous window's text as prompt.

When the request names no language, each window's language is detected from the encoder
output its decoding uses anyway (faster-whisper's per-window detection), instead of a
separate encoder pass over the first 30 s; the request reports its first window's language.
"""

import copy
import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from faster_whisper import BatchedInferencePipeline, WhisperModel

CHUNK_S = 30  # Whisper's window


@dataclass(slots=True)
class Transcript:
    """A transcription under way: ``language`` is final once ``segments`` is exhausted."""

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


Decoded = tuple[list[dict[str, Any]], str | None]  # a window's segments, detected language
Decode = Callable[[list[Window]], list[Decoded]]


class _RequestPipeline(BatchedInferencePipeline):
    """faster-whisper's batched pipeline for one request, whose windows go to ``decode``."""

    def __init__(self, model: WhisperModel, decode: Decode, transcript: Transcript) -> None:
        super().__init__(model)
        self.decode = decode
        self.transcript = transcript
        self.detected = False

    def forward(self, features, tokenizer, chunks_metadata, options):  # noqa: ANN001, ANN201
        options_key = repr(dataclasses.replace(options, clip_timestamps=None))
        key = (tokenizer.task, tokenizer.language, options_key)
        windows = [
            Window(f, meta, tokenizer, options, key)
            for f, meta in zip(features, chunks_metadata, strict=True)
        ]
        decoded = self.decode(windows)
        for _, language in decoded:
            if language and not self.detected:
                self.transcript.language, self.detected = language, True
        return [segments for segments, _ in decoded]


class _LanguageRecorder:
    """The CTranslate2 model, keeping what its last ``detect_language`` call found."""

    def __init__(self, model: Any) -> None:
        self._model = model
        self.detected: list[Any] = []

    def detect_language(self, encoder_output: Any) -> list[Any]:
        self.detected = self._model.detect_language(encoder_output)
        return self.detected

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)


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
        # The decoder's view of the model records per-window language detections.
        self._languages = _LanguageRecorder(self.model.model)
        decoder_model = copy.copy(self.model)
        decoder_model.model = self._languages
        self._decoder = BatchedInferencePipeline(decoder_model)

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
        """Prepare a transcription (VAD, windows, features); its segments come lazily, each
        window decoded by ``decode`` (default: ``decode_windows``)."""
        rate = self.model.feature_extractor.sampling_rate
        duration = len(audio) / rate
        clips = None
        if not self.vad_filter:  # fixed windows (with the VAD the pipeline cuts at pauses)
            clips = [
                {"start": start, "end": min(start + CHUNK_S, duration)}
                for start in range(0, max(1, int(np.ceil(duration))), CHUNK_S)
            ]
        # No language given: detect it per window, in the batch (see the module's docstring).
        detect = language is None and self.multilingual
        transcript = Transcript(language or "en", duration, iter(()))
        pipeline = _RequestPipeline(self.model, decode or self.decode_windows, transcript)
        segments, _ = pipeline.transcribe(
            audio,
            task=task,
            language="en" if detect else language,  # a placeholder each window replaces
            multilingual=detect,
            initial_prompt=prompt or None,
            beam_size=self.beam_size,
            temperature=temperature or 0.0,
            vad_filter=self.vad_filter,
            clip_timestamps=clips,
            word_timestamps=word_timestamps,
            without_timestamps=False,  # timestamp tokens: segments within a window
            batch_size=1,  # one window at a time per request: a cancelled one stops between
        )
        transcript.segments = map(_segment_dict, segments)
        return transcript

    def decode_windows(self, windows: list[Window]) -> list[Decoded]:
        """Decode windows of any requests: one encoder/decoder batch per group of windows
        sharing a ``key``. Returns each window's segments and detected language, in order."""
        results: list[Decoded | None] = [None] * len(windows)
        groups: dict[tuple, list[int]] = {}
        for i, window in enumerate(windows):
            groups.setdefault(window.key, []).append(i)
        for indices in groups.values():
            first = windows[indices[0]]
            self._decoder.last_speech_timestamp = 0.0
            self._languages.detected = []
            decoded = self._decoder.forward(
                np.stack([windows[i].features for i in indices]),
                first.tokenizer,
                [windows[i].metadata for i in indices],
                first.options,
            )
            detected = self._languages.detected or [None] * len(indices)
            for i, segments, found in zip(indices, decoded, detected, strict=True):
                results[i] = (segments, found[0][0][2:-2] if found else None)  # "<|de|>"
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
