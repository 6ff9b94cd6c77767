"""Whisper's log-mel features of a whole recording, in bounded memory (pure numpy)."""

from typing import Any

import numpy as np


def log_mel(extractor: Any, audio: np.ndarray, block: int = 3000) -> np.ndarray:
    """``extractor(audio)`` (Whisper's log-mel features of the whole audio, which the
    sequential ``transcribe`` slices its windows from) computed ``block`` frames at a time:
    the same values, without the whole audio's STFT in memory at once (about 30 KB per 10 ms
    frame). The result is 32 KB per second of audio (80 mels), half the audio's own size."""
    n_fft, hop = extractor.n_fft, extractor.hop_length
    padded = np.pad(np.pad(audio.astype(np.float32), (0, 160)), n_fft // 2, mode="reflect")
    frames = (len(padded) - n_fft) // hop  # the extractor drops the last STFT frame
    window = np.hanning(n_fft + 1)[:-1].astype(np.float32)
    out = np.empty((extractor.mel_filters.shape[0], frames), dtype=np.float32)
    for first in range(0, frames, block):
        last = min(frames, first + block)
        stft = extractor.stft(
            padded[first * hop : (last - 1) * hop + n_fft],
            n_fft,
            hop,
            window=window,
            center=False,
            return_complex=True,
        ).astype(np.complex64)
        mel = extractor.mel_filters @ (np.abs(stft) ** 2)
        out[:, first:last] = np.log10(np.clip(mel, 1e-10, None))
    np.maximum(out, out.max(initial=-10.0) - 8.0, out=out)
    return (out + 4.0) / 4.0
