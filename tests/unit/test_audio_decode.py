"""Audio decoding: every container to mono 16 kHz float32; bad input is a clear error."""

import asyncio
import io
import subprocess
import sys

import numpy as np
import pytest

from deployments.audio.decode import (
    WHISPER_SAMPLE_RATE,
    AudioDecodeError,
    AudioTooLongError,
    decode_audio,
)
from deployments.audio.deployment import AudioPreprocessor
from deployments.common.contracts import DecodedAudio, ErrorFrame
from tests.audio_files import CONTAINERS, SPEECH_EN, silence_flac, transcode, wav_bytes

EN_SECONDS = 3.438


@pytest.mark.parametrize("extension", sorted(CONTAINERS))
@pytest.mark.parametrize("layout", ["mono", "stereo"])
def test_every_container_decodes_to_mono_16k(extension, layout):
    audio = decode_audio(transcode(SPEECH_EN, extension, layout=layout))
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert len(audio) / WHISPER_SAMPLE_RATE == pytest.approx(EN_SECONDS, abs=0.1)
    assert 0.05 < float(np.abs(audio).max()) <= 1.5  # speech, not silence or garbage


def test_resampling_keeps_pitch():
    rate = 44_100
    t = np.arange(rate) / rate
    audio = decode_audio(wav_bytes(0.5 * np.sin(2 * np.pi * 440 * t), rate))
    assert len(audio) == pytest.approx(WHISPER_SAMPLE_RATE, abs=32)
    spectrum = np.abs(np.fft.rfft(audio))
    assert np.argmax(spectrum) * WHISPER_SAMPLE_RATE / len(audio) == pytest.approx(440, abs=2)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"not audio at all, just some text" * 10,
        bytes(range(256)) * 40,
        b"RIFF\x24\x00\x00\x00WAVEfmt ",  # a WAV header cut short
        b"%PDF-1.4\n" + b"0" * 2000,
    ],
)
def test_non_audio_is_a_decode_error(data):
    with pytest.raises(AudioDecodeError):
        decode_audio(data)


def test_truncated_and_corrupted_files_are_errors():
    mp4 = transcode(SPEECH_EN, "mp4")
    with pytest.raises(AudioDecodeError):
        decode_audio(mp4[:200])
    wav = SPEECH_EN.read_bytes()
    with pytest.raises(AudioDecodeError):
        decode_audio(wav[:44])  # header only: no samples


def test_video_without_audio_stream_is_an_error():
    import av

    out = io.BytesIO()
    with av.open(out, mode="w", format="mp4") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height = 32, 32
        for _ in range(3):
            frame = av.VideoFrame.from_ndarray(np.zeros((32, 32, 3), np.uint8), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    with pytest.raises(AudioDecodeError, match="no audio stream"):
        decode_audio(out.getvalue())


def test_duration_limit_stops_decoding():
    with pytest.raises(AudioTooLongError):
        decode_audio(SPEECH_EN.read_bytes(), max_duration_s=1.0)
    assert len(decode_audio(SPEECH_EN.read_bytes(), max_duration_s=10)) > 0


def test_preprocessor_returns_audio_or_a_400_frame():
    pool = AudioPreprocessor(max_duration_s=2.0)
    bad = asyncio.run(pool.decode(b"garbage" * 100))
    assert isinstance(bad, ErrorFrame) and bad.status == 400 and bad.code == "invalid_audio"
    long = asyncio.run(pool.decode(SPEECH_EN.read_bytes()))
    assert isinstance(long, ErrorFrame) and long.code == "audio_too_long"
    ok = asyncio.run(AudioPreprocessor(60).decode(SPEECH_EN.read_bytes()))
    assert isinstance(ok, DecodedAudio) and ok.duration_s == pytest.approx(EN_SECONDS, abs=0.05)


PEAK_RSS = """
import resource, sys
from deployments.audio.decode import decode_audio
data = open(sys.argv[1], "rb").read()
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
audio = decode_audio(data, max_duration_s=1800)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(audio.size, audio.nbytes, (after - before) * 1024)
"""


def test_a_silence_bomb_decodes_in_memory_bounded_by_its_16khz_output(tmp_path):
    """Ten minutes of silence at 384 kHz (110 KB of FLAC): at the source rate that is 920 MB
    of float32 (the decoder used to peak at 1.8 GB); resampled while decoding, the peak is
    the 37 MB of 16 kHz output plus a constant."""
    bomb = tmp_path / "bomb.flac"
    bomb.write_bytes(silence_flac(600))
    assert bomb.stat().st_size < 200_000
    run = subprocess.run(
        [sys.executable, "-c", PEAK_RSS, str(bomb)], capture_output=True, text=True, check=True
    )
    samples, output_bytes, peak_growth = map(int, run.stdout.split())
    assert samples == pytest.approx(600 * WHISPER_SAMPLE_RATE, abs=WHISPER_SAMPLE_RATE // 100)
    assert peak_growth < output_bytes + 48 * 2**20, (peak_growth, output_bytes)
