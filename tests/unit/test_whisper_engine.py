"""The Whisper engine's window walk and features, on the real tiny.en model files with a
stand-in ``decode`` (no decoding): where each window starts after the decoder stopped at a
timestamp, and that the features are the ones faster-whisper's sequential ``transcribe``
slices its windows from."""

import os
from pathlib import Path

import numpy as np
import pytest

from deployments.whisper.engine import Decoded, WhisperEngine, Window
from deployments.whisper.features import log_mel

MODEL = Path(os.environ.get("SERVE_APP_MODELS_DIR", "models")) / "whisper-tiny.en"
pytestmark = pytest.mark.skipif(not MODEL.is_dir(), reason="models not prepared (make setup)")


@pytest.fixture(scope="module")
def engine() -> WhisperEngine:
    return WhisperEngine(str(MODEL), {"vad_filter": False, "cpu_threads": 1})


def segment(start: float, end: float, text: str, tokens: list[int]) -> dict:
    return {
        "seek": 0, "start": start, "end": end, "text": text, "tokens": tokens,
        "avg_logprob": -0.1, "no_speech_prob": 0.0, "compression_ratio": 1.0,
        "temperature": 0.0, "words": None,
    }  # fmt: skip


def test_a_window_the_decoder_left_open_is_decoded_again_from_its_last_timestamp(engine):
    """The decoder says it accounted for 20 s of each 30 s window: the next window starts
    there (so what followed is decoded again, with what comes after it), not at 30 s."""
    windows: list[Window] = []

    def decode(batch: list[Window]) -> list[Decoded]:
        (window,) = batch
        windows.append(window)
        start = window.offset_s
        text = [segment(start, start + 20, f" words at {start:g}", [len(windows)])]
        return [Decoded(text, None, 2000 if window.duration_s > 20 else 0)]

    audio = np.zeros(70 * 16_000, dtype=np.float32)
    transcript = engine.transcribe(
        audio, task="transcribe", language=None, prompt="Lighthouse.", temperature=None,
        word_timestamps=False, decode=decode,
    )  # fmt: skip
    segments = list(transcript.segments)
    assert [(w.offset_s, w.duration_s) for w in windows] == [(0, 30), (20, 30), (40, 30), (60, 10)]
    assert [s["start"] for s in segments] == [0, 20, 40, 60]
    assert [s["id"] for s in segments] == [0, 1, 2, 3]
    assert transcript.duration_s == 70
    # Each window is prompted with the user's prompt, then the text decoded before it.
    prompt = engine.tokenizer("transcribe", "en").encode(" Lighthouse.")
    assert windows[0].previous == prompt
    assert windows[2].previous == [*prompt, 1, 2]


@pytest.mark.parametrize("seconds", [0.01, 7.3, 95.5])
def test_features_are_faster_whispers_own(engine, seconds):
    rng = np.random.default_rng(7)
    audio = (rng.standard_normal(int(seconds * 16_000)) * 0.1).astype(np.float32)
    audio[: len(audio) // 3] = 0  # digital silence: the floor depends on the loudest frame
    expected = engine.model.feature_extractor(audio)
    ours = log_mel(engine.model.feature_extractor, audio)
    assert ours.shape == expected.shape
    np.testing.assert_allclose(ours, expected, atol=1e-6)


def test_without_the_vad_the_whole_audio_is_decoded_on_its_own_timeline(engine):
    """``engine.vad_filter: false``: nothing is cut out first, the real decoder walks the
    whole recording (5 s of faint noise, then the speech fixture), and the timestamps are the
    recording's own."""
    from deployments.audio.decode import decode_audio
    from tests.audio_files import SPEECH_EN

    speech = decode_audio(SPEECH_EN.read_bytes())
    noise = (np.random.default_rng(3).standard_normal(5 * 16_000) * 1e-3).astype(np.float32)
    transcript = engine.transcribe(
        np.concatenate([noise, speech]), task="transcribe", language="en", prompt=None,
        temperature=None, word_timestamps=True,
    )  # fmt: skip
    segments = list(transcript.segments)
    text = "".join(s["text"] for s in segments).lower()
    assert "the quick" in text and "over the lazy dog" in text, text  # tiny.en hears the rest badly
    words = [w for s in segments for w in s["words"]]
    assert words[0]["start"] >= 4.5  # the speech starts at 5 s of the upload
    assert words[-1]["end"] <= transcript.duration_s + 0.05
    assert [w["start"] for w in words] == sorted(w["start"] for w in words)
