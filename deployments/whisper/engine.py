"""The one module that imports faster-whisper."""

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from faster_whisper import WhisperModel


@dataclass(frozen=True, slots=True)
class Transcript:
    """What faster-whisper knows before the first segment."""

    language: str
    duration_s: float
    segments: Iterator[dict[str, Any]]


class WhisperEngine:
    """A faster-whisper model and the decoding options from the config."""

    def __init__(self, source: str, options: dict[str, Any]) -> None:
        self.beam_size = options.get("beam_size", 5)
        self.vad_filter = options.get("vad_filter", False)
        self.model = WhisperModel(
            source,
            device=options.get("device", "cpu"),
            compute_type=options.get("compute_type", "int8"),
            cpu_threads=options.get("cpu_threads", 0),
            num_workers=options.get("num_workers", 1),
            local_files_only=True,
        )

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
    ) -> Transcript:
        """Start a transcription; segments decode lazily as the iterator is consumed."""
        kwargs: dict[str, Any] = {}
        if temperature is not None:
            kwargs["temperature"] = temperature
        segments, info = self.model.transcribe(
            audio,
            task=task,
            language=language,
            initial_prompt=prompt or None,
            beam_size=self.beam_size,
            vad_filter=self.vad_filter,
            word_timestamps=word_timestamps,
            **kwargs,
        )
        return Transcript(info.language, float(info.duration), map(_segment_dict, segments))

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
