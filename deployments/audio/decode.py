"""Pure audio decoding: any container PyAV reads -> mono float32 at 16 kHz (PyAV + soxr)."""

import io
from typing import Any

import av
import numpy as np
import soxr

WHISPER_SAMPLE_RATE = 16_000


class AudioDecodeError(ValueError):
    """The bytes are not decodable audio (empty, corrupt, truncated, not audio)."""


class AudioTooLongError(ValueError):
    """The decoded audio is longer than the configured maximum."""


def decode_audio(
    data: bytes, *, max_duration_s: float | None = None, sample_rate: int = WHISPER_SAMPLE_RATE
) -> np.ndarray:
    """Decode ``data`` to mono float32 samples at ``sample_rate``.

    Resamples while decoding (soxr's streaming resampler), so memory is the output plus a
    constant whatever the source rate or codec. Stops as soon as the output exceeds
    ``max_duration_s`` (raises ``AudioTooLongError``); raises ``AudioDecodeError`` for
    anything that is not audio.
    """
    if not data:
        raise AudioDecodeError("the file is empty")
    try:
        with av.open(io.BytesIO(data), mode="r", metadata_errors="ignore") as container:
            if not container.streams.audio:
                raise AudioDecodeError("the file has no audio stream")
            stream = container.streams.audio[0]
            source_rate = stream.rate or stream.codec_context.sample_rate
            if not source_rate:
                raise AudioDecodeError("the audio stream has no sample rate")
            # FFmpeg downmixes to float32 mono at the source rate; soxr changes the rate.
            to_mono = av.AudioResampler(format="flt", layout="mono", rate=source_rate)
            rate_change = (
                soxr.ResampleStream(source_rate, sample_rate, 1, dtype="float32")
                if source_rate != sample_rate
                else None
            )
            output = _Output(max_duration_s, sample_rate)
            for frame in container.decode(stream):
                for piece in to_mono.resample(frame):
                    output.add(piece.to_ndarray().reshape(-1), rate_change)
            for piece in to_mono.resample(None):
                output.add(piece.to_ndarray().reshape(-1), rate_change)
            if rate_change is not None:
                output.add(np.zeros(0, dtype=np.float32), rate_change, last=True)
    except (av.FFmpegError, UnicodeDecodeError, ValueError) as exc:
        if isinstance(exc, AudioDecodeError | AudioTooLongError):
            raise
        raise AudioDecodeError("the file could not be decoded as audio") from exc
    if output.size == 0:
        raise AudioDecodeError("the file contains no audio samples")
    return output.samples()


class _Output:
    """Output samples written in place into one buffer sized for the longest allowed audio:
    pages the decode never reaches are never touched, so they cost no memory."""

    def __init__(self, max_duration_s: float | None, sample_rate: int) -> None:
        self.max_duration_s = max_duration_s
        self.limit = None if max_duration_s is None else int(max_duration_s * sample_rate)
        # The resampler may round the last block up by a few samples: allow 10 ms.
        capacity = sample_rate * 60 if self.limit is None else self.limit + sample_rate // 100
        self.buffer = np.empty(capacity, dtype=np.float32)
        self.size = 0

    def add(self, samples: np.ndarray, rate_change: Any, last: bool = False) -> None:
        if rate_change is not None:
            samples = rate_change.resample_chunk(samples, last=last)
        end = self.size + samples.size
        if end > self.buffer.size:
            if self.limit is not None:
                raise AudioTooLongError(
                    f"the audio is longer than the maximum of {self.max_duration_s:g} seconds"
                )
            grown = np.empty(max(end, 2 * self.buffer.size), dtype=np.float32)
            grown[: self.size] = self.buffer[: self.size]
            self.buffer = grown
        self.buffer[self.size : end] = samples
        self.size = end

    def samples(self) -> np.ndarray:
        return self.buffer[: self.size]
