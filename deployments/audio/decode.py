"""Pure audio decoding: any container PyAV reads -> mono float32 at 16 kHz (PyAV + soxr)."""

import io

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

    Stops decoding as soon as the audio exceeds ``max_duration_s`` (raises
    ``AudioTooLongError``); raises ``AudioDecodeError`` for anything that is not audio.
    """
    if not data:
        raise AudioDecodeError("the file is empty")
    chunks: list[np.ndarray] = []
    try:
        with av.open(io.BytesIO(data), mode="r", metadata_errors="ignore") as container:
            if not container.streams.audio:
                raise AudioDecodeError("the file has no audio stream")
            stream = container.streams.audio[0]
            source_rate = stream.rate or stream.codec_context.sample_rate
            if not source_rate:
                raise AudioDecodeError("the audio stream has no sample rate")
            # Downmix and convert to float32 at the source rate; soxr does the rate change.
            to_mono = av.AudioResampler(format="flt", layout="mono", rate=source_rate)
            limit = None if max_duration_s is None else int(max_duration_s * source_rate)
            total = 0
            for frame in container.decode(stream):
                for out in to_mono.resample(frame):
                    samples = out.to_ndarray().reshape(-1)
                    total += samples.size
                    chunks.append(samples)
                if limit is not None and total > limit:
                    raise AudioTooLongError(
                        f"the audio is longer than the maximum of {max_duration_s:g} seconds"
                    )
            for out in to_mono.resample(None):
                chunks.append(out.to_ndarray().reshape(-1))
    except (av.FFmpegError, UnicodeDecodeError, ValueError) as exc:
        if isinstance(exc, AudioDecodeError | AudioTooLongError):
            raise
        raise AudioDecodeError("the file could not be decoded as audio") from exc
    audio = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.float32)
    if audio.size == 0:
        raise AudioDecodeError("the file contains no audio samples")
    if source_rate != sample_rate:
        audio = soxr.resample(audio, source_rate, sample_rate)
    return np.ascontiguousarray(audio, dtype=np.float32)
