"""Speech fixtures and PyAV transcoding of them into every container we accept."""

import io
import wave
from pathlib import Path

import av
import numpy as np

FIXTURES = Path(__file__).resolve().parent / "fixtures"
SPEECH_EN = FIXTURES / "speech_en.wav"  # "The quick brown fox jumps over the lazy dog."
SPEECH_DE = FIXTURES / "speech_de.wav"  # "Ich trinke jeden Morgen eine Tasse Kaffee."

# extension -> (PyAV container format, codec, sample rate)
CONTAINERS: dict[str, tuple[str, str, int]] = {
    "wav": ("wav", "pcm_s16le", 16_000),
    "mp3": ("mp3", "libmp3lame", 22_050),
    "ogg": ("ogg", "libopus", 48_000),
    "flac": ("flac", "flac", 44_100),
    "webm": ("webm", "libopus", 48_000),
    "mp4": ("mp4", "aac", 44_100),
    "m4a": ("ipod", "aac", 44_100),
}


def transcode(source: Path | bytes, extension: str, *, layout: str = "mono") -> bytes:
    """Re-encode ``source`` (a file or its bytes) into the container for ``extension``."""
    fmt, codec, rate = CONTAINERS[extension]
    out = io.BytesIO()
    data = io.BytesIO(source) if isinstance(source, bytes) else str(source)
    with av.open(data) as inp, av.open(out, mode="w", format=fmt) as container:
        stream = container.add_stream(codec, rate=rate, layout=layout)
        sample_format = stream.codec_context.codec.audio_formats[0].name
        resampler = av.AudioResampler(format=sample_format, layout=layout, rate=rate)
        frame_size = stream.codec_context.frame_size or 1024
        fifo = av.AudioFifo()
        frames = [f for frame in inp.decode(audio=0) for f in resampler.resample(frame)]
        frames += resampler.resample(None)
        for frame in frames:
            frame.pts = None
            fifo.write(frame)
            while fifo.samples >= frame_size:
                container.mux(stream.encode(fifo.read(frame_size)))
        if fifo.samples:
            container.mux(stream.encode(fifo.read()))
        container.mux(stream.encode(None))
    return out.getvalue()


def wav_bytes(samples: np.ndarray, rate: int) -> bytes:
    """16-bit mono WAV of float samples in [-1, 1]."""
    out = io.BytesIO()
    with wave.open(out, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes((np.clip(samples, -1, 1) * 32767).astype(np.int16).tobytes())
    return out.getvalue()


def silence_flac(seconds: int, rate: int = 384_000) -> bytes:
    """A "silence bomb": digital silence at a high rate, which FLAC packs ~1000:1 (ten
    minutes at 384 kHz are 110 KB that decode to 230 M samples)."""
    out = io.BytesIO()
    with av.open(out, mode="w", format="flac") as container:
        stream = container.add_stream("flac", rate=rate, layout="mono")
        zeros = np.zeros((1, rate), dtype=np.int16)  # one second per frame
        for second in range(seconds):
            frame = av.AudioFrame.from_ndarray(zeros, format="s16", layout="mono")
            frame.sample_rate, frame.pts = rate, second * rate
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return out.getvalue()
