"""The one module that imports faster-whisper.

A transcription walks its audio in 30-second windows as faster-whisper's own sequential
``transcribe`` does: with the VAD on, over the detected speech put end to end (pauses of 2 s
or more removed), timestamps mapped back afterwards; each window is prompted with the text
decoded so far (except a last window under a second, which Whisper tends to fill with a
repeat of its prompt); a decoding that looks failed (repetitive or improbable) is done again at
rising temperatures; a window that holds no speech gives no segments. When the decoder stops
at a timestamp before the end of its window (Whisper's way of saying the speech after it
runs on past the window), the next window starts at that timestamp, so that speech is
decoded with what follows instead of being lost.

The windows go to ``decode``: the deployment's batcher, which hands the windows of
concurrent requests to ``decode_windows`` together, one encoder and one decoder call per
group of windows that share task, language and options (their prompts may differ).

When the request names no language, the first window's language is detected from the
encoder output its decoding uses anyway, and the request's later windows use that language.
"""

import dataclasses
import functools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import ctranslate2
import numpy as np
from faster_whisper import WhisperModel
from faster_whisper.audio import pad_or_trim
from faster_whisper.tokenizer import Tokenizer
from faster_whisper.transcribe import (
    Segment,
    TranscriptionOptions,
    Word,
    get_compression_ratio,
    get_suppressed_tokens,
    restore_speech_timestamps,
)
from faster_whisper.vad import VadOptions, collect_chunks, get_speech_timestamps

from deployments.whisper import formats
from deployments.whisper.features import log_mel

CHUNK_S = 30  # Whisper's window
FALLBACK_TEMPERATURES = [0.2, 0.4, 0.6, 0.8, 1.0]
PROMPT_TOKENS = 223  # of the text so far: what faster-whisper's ``get_prompt`` keeps


@dataclass(slots=True)
class Transcript:
    """A transcription under way: ``language`` is final once ``segments`` is exhausted."""

    language: str
    duration_s: float
    segments: Iterator[dict[str, Any]]


@dataclass(slots=True)
class Window:
    """Up to 30 s of one request's audio, ready for the decoder. Windows batch together when
    they share ``key`` (task, language and decoding options)."""

    task: str  # transcribe or translate
    features: np.ndarray  # (n_mels, 3000) log-mel
    offset_s: float  # where the window starts in the audio the request walks
    duration_s: float  # audio in the window (the rest of the features is padding)
    tokenizer: Tokenizer
    options: TranscriptionOptions  # multilingual: detect the language from this window
    previous: list[int] = field(default_factory=list)  # prompt: the text so far, as tokens
    last_speech_s: float = 0.0  # end of the request's last word so far (word timestamps)

    @property
    def key(self) -> tuple:
        return (self.task, self.tokenizer.language_code, repr(self.options))


@dataclass(slots=True)
class Decoded:
    """A window's segments (faster-whisper's dicts, times in the walked audio), the language
    detected from it (if asked), and how many of its feature frames (10 ms each) those
    segments account for: the next window starts there."""

    segments: list[dict[str, Any]]
    language: str | None
    consumed_frames: int


Decode = Callable[[list[Window]], list[Decoded]]


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
        self._tokenizers: dict[tuple[str, str], Tokenizer] = {}

    @property
    def multilingual(self) -> bool:
        return self.model.model.is_multilingual

    def tokenizer(self, task: str, language: str) -> Tokenizer:
        key = (task, language)
        if key not in self._tokenizers:
            self._tokenizers[key] = Tokenizer(
                self.model.hf_tokenizer, self.multilingual, task=task, language=language
            )
        return self._tokenizers[key]

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
        """Find the speech (VAD); its segments come lazily, window after window, each window
        decoded by ``decode`` (default: ``decode_windows``)."""
        rate = self.model.feature_extractor.sampling_rate
        transcript = Transcript(language or "en", len(audio) / rate, iter(()))
        speech_chunks = None
        if self.vad_filter:  # walk the speech alone, put end to end
            speech_chunks = get_speech_timestamps(audio, VadOptions(), rate)
            audio = collect_chunks(audio, speech_chunks, rate)[0][0]
        tokenizer = self.tokenizer(task, language or "en")  # "en": detected, then replaced
        options = _options(
            tokenizer,
            beam_size=self.beam_size,
            temperature=temperature or 0.0,
            word_timestamps=word_timestamps,
            detect=language is None and self.multilingual,
        )
        first = Window(task, np.empty(0), 0.0, 0.0, tokenizer, options)
        if prompt and prompt.strip():
            first.previous = tokenizer.encode(" " + prompt.strip())
        segments = self._walk(audio, transcript, first, decode or self.decode_windows)
        if speech_chunks:
            segments = restore_speech_timestamps(segments, speech_chunks, rate)
        transcript.segments = (formats.segment_dict(i, s) for i, s in enumerate(segments))
        return transcript

    def _walk(
        self, audio: np.ndarray, transcript: Transcript, settings: Window, decode: Decode
    ) -> Iterator[Segment]:
        """Decode ``audio`` window after window (see the module's docstring); ``settings``
        holds what the next window gets besides its audio."""
        features = log_mel(self.model.feature_extractor, audio)
        content_frames, per_second = features.shape[-1] - 1, self.model.frames_per_second
        seek = 0
        while seek < content_frames:
            size = min(content_frames - seek, CHUNK_S * per_second)
            window = dataclasses.replace(
                settings,
                features=pad_or_trim(features[:, seek : seek + size]),
                offset_s=seek / per_second,
                duration_s=size / per_second,
            )
            (decoded,) = decode([window])
            if settings.options.multilingual:  # the first window tells the language
                transcript.language = decoded.language or "en"
                settings.tokenizer = self.tokenizer(settings.task, transcript.language)
                settings.options = dataclasses.replace(settings.options, multilingual=False)
            for segment in decoded.segments:
                if segment["temperature"] > settings.options.prompt_reset_on_temperature:
                    settings.previous = []  # as faster-whisper: a shaky text prompts nothing
                settings.previous = [*settings.previous, *segment["tokens"]][-PROMPT_TOKENS:]
                if segment["words"]:
                    settings.last_speech_s = segment["words"][-1]["end"]
                yield _segment(segment)
            consumed = decoded.consumed_frames
            seek += min(consumed, size) if consumed > 0 else size  # 0: never stall

    def decode_windows(self, windows: list[Window]) -> list[Decoded]:
        """Decode windows of any requests: one encoder/decoder batch per group of windows
        sharing a ``key``. Returns each window's ``Decoded``, in order."""
        results: list[Decoded | None] = [None] * len(windows)
        groups: dict[tuple, list[int]] = {}
        for i, window in enumerate(windows):
            groups.setdefault(window.key, []).append(i)
        for indices in groups.values():
            batch = [windows[i] for i in indices]
            for i, decoded in zip(indices, self._decode_batch(batch), strict=True):
                results[i] = decoded
        return results  # type: ignore[return-value]

    def _decode_batch(self, batch: list[Window]) -> list[Decoded]:
        """One encoder and one decoder call for windows that share a ``key``."""
        model, options = self.model, batch[0].options
        encoder_output = model.encode(np.stack([w.features for w in batch]))
        languages: list[str | None] = [None] * len(batch)
        if options.multilingual:
            found = model.model.detect_language(encoder_output)
            languages = [best[0][0][2:-2] for best in found]  # "<|de|>" -> "de"
        tokenizers = [
            self.tokenizer(w.task, language) if language else w.tokenizer
            for w, language in zip(batch, languages, strict=True)
        ]
        prompts = [  # no text prompt for a last sliver of audio: Whisper would repeat it
            model.get_prompt(tokenizer, w.previous if w.duration_s >= 1 else [], False)
            for w, tokenizer in zip(batch, tokenizers, strict=True)
        ]
        results = model.model.generate(
            encoder_output, prompts, **_generate_options(options, options.temperatures[0])
        )
        return [
            self._segments(
                window,
                tokenizers[i],
                prompts[i],
                results[i],
                functools.partial(_row, encoder_output, i, len(batch)),
                languages[i],
            )
            for i, window in enumerate(batch)
        ]

    def _segments(
        self,
        window: Window,
        tokenizer: Tokenizer,
        prompt: list[int],
        result: Any,
        encoder_output: Callable[[], ctranslate2.StorageView],
        language: str | None,
    ) -> Decoded:
        """A window's decoded tokens as segments (see the module's docstring)."""
        model, options = self.model, window.options
        tokens, temperature = result.sequences_ids[0], options.temperatures[0]
        avg_logprob = result.scores[0] * len(tokens) ** options.length_penalty / (len(tokens) + 1)
        silent = result.no_speech_prob > options.no_speech_threshold
        improbable = avg_logprob < options.log_prob_threshold
        repetitive = (
            get_compression_ratio(tokenizer.decode(tokens).strip())
            > options.compression_ratio_threshold
        )
        if temperature == 0 and (repetitive or improbable) and not (silent and improbable):
            result, avg_logprob, temperature, _ = model.generate_with_fallback(
                encoder_output(),
                prompt,
                tokenizer,
                dataclasses.replace(options, temperatures=FALLBACK_TEMPERATURES),
            )
            tokens = result.sequences_ids[0]
        frames = round(window.duration_s * model.frames_per_second)
        if silent and avg_logprob < options.log_prob_threshold:
            return Decoded([], language, frames)
        start = round(window.offset_s * model.frames_per_second)
        segments, seek, _ = model._split_segments_by_timestamps(  # noqa: SLF001
            tokenizer=tokenizer,
            tokens=tokens,
            time_offset=window.offset_s,
            segment_size=frames,
            segment_duration=window.duration_s,
            seek=start,
        )
        for segment in segments:
            text = tokenizer.decode(segment["tokens"])
            segment.update(
                text=text,
                seek=start,
                avg_logprob=avg_logprob,
                no_speech_prob=result.no_speech_prob,
                compression_ratio=get_compression_ratio(text),
                temperature=temperature,
                words=None,
            )
        if options.word_timestamps and segments:
            # With the window's own language: words of zh, ja, th, lo, my and yue split on
            # characters, not spaces.
            model.add_word_timestamps(
                [segments],
                tokenizer,
                encoder_output(),
                [frames],
                options.prepend_punctuations,
                options.append_punctuations,
                window.last_speech_s,
            )
        kept = [s for s in segments if s["start"] < s["end"] and s["text"].strip()]
        return Decoded(kept, language, seek - start)

    def self_test(self) -> None:
        """Run the encoder on one second of silence: raises if the model is broken."""
        features = self.model.feature_extractor(np.zeros(16_000, dtype=np.float32))
        self.model.encode(features[:, : self.model.feature_extractor.nb_max_frames])

    def check_health(self) -> None:
        """Raise if CTranslate2 no longer holds the model."""
        if not self.model.model.model_is_loaded:
            raise RuntimeError("the Whisper model is not loaded")


def _options(
    tokenizer: Tokenizer,
    *,
    beam_size: int,
    temperature: float,
    word_timestamps: bool,
    detect: bool,
) -> TranscriptionOptions:
    """faster-whisper's options with its ``transcribe`` defaults, one temperature."""
    return TranscriptionOptions(
        beam_size=beam_size,
        best_of=5,
        patience=1,
        length_penalty=1,
        repetition_penalty=1,
        no_repeat_ngram_size=0,
        log_prob_threshold=-1.0,
        no_speech_threshold=0.6,
        compression_ratio_threshold=2.4,
        condition_on_previous_text=False,
        prompt_reset_on_temperature=0.5,
        temperatures=[temperature],
        initial_prompt=None,  # the prompt is each window's ``previous``
        prefix=None,
        suppress_blank=True,
        suppress_tokens=get_suppressed_tokens(tokenizer, [-1]),
        without_timestamps=False,
        max_initial_timestamp=1.0,
        word_timestamps=word_timestamps,
        prepend_punctuations="\"'“¿([{-",
        append_punctuations="\"'.。,，!！?？:：”)]}、",
        multilingual=detect,
        max_new_tokens=None,
        clip_timestamps="0",
        hallucination_silence_threshold=None,
        hotwords=None,
    )


def _generate_options(options: TranscriptionOptions, temperature: float) -> dict[str, Any]:
    """CTranslate2 ``generate`` arguments for ``options``, as faster-whisper's sequential
    ``transcribe`` passes them: beam search at temperature 0, else best of sampled."""
    if temperature > 0:
        search = {"beam_size": 1, "num_hypotheses": options.best_of, "sampling_topk": 0}
    else:
        search = {"beam_size": options.beam_size, "patience": options.patience}
    return {
        **search,
        "sampling_temperature": temperature or 1.0,
        "length_penalty": options.length_penalty,
        "repetition_penalty": options.repetition_penalty,
        "no_repeat_ngram_size": options.no_repeat_ngram_size,
        "max_length": 448,  # Whisper's, prompt included
        "return_scores": True,
        "return_no_speech_prob": True,
        "suppress_blank": options.suppress_blank,
        "suppress_tokens": options.suppress_tokens,
        "max_initial_timestamp_index": round(options.max_initial_timestamp / 0.02),
    }


def _row(encoder_output: ctranslate2.StorageView, i: int, n: int) -> ctranslate2.StorageView:
    """Row ``i`` of a batch's encoder output (the whole output when the batch is one)."""
    if n == 1:
        return encoder_output
    return ctranslate2.StorageView.from_array(
        np.ascontiguousarray(np.asarray(encoder_output)[i : i + 1])
    )


def _segment(segment: dict[str, Any]) -> Segment:
    words = segment["words"]
    return Segment(
        id=0,
        seek=segment["seek"],
        start=segment["start"],
        end=segment["end"],
        text=segment["text"],
        tokens=segment["tokens"],
        avg_logprob=segment["avg_logprob"],
        compression_ratio=segment["compression_ratio"],
        no_speech_prob=segment["no_speech_prob"],
        words=[Word(**w) for w in words] if words is not None else None,
        temperature=segment["temperature"],
    )
