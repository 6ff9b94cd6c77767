"""Silence and voice-activity filtering: what Whisper says, and how long it takes, with and
without faster-whisper's Silero VAD (``engine.vad_filter``), on the speech fixtures, on
speech padded with silence, on digital silence and on faint noise. Engine called directly
with the config's options. Figures, not assertions.

    .venv/bin/python -m bench.silence_bench [--models whisper-base whisper-tiny.en]
"""

import argparse
import time

import numpy as np

from bench.server import ROOT, engine_options
from deployments.audio.decode import decode_audio
from tests.audio_files import SPEECH_DE, SPEECH_EN

RATE = 16_000


def clips() -> dict[str, tuple[np.ndarray, str | None]]:
    """name -> (16 kHz samples, language)."""
    en, de = decode_audio(SPEECH_EN.read_bytes()), decode_audio(SPEECH_DE.read_bytes())
    quiet = np.zeros(10 * RATE, dtype=np.float32)
    noise = np.random.default_rng(0).normal(0, 10 ** (-60 / 20), 60 * RATE).astype(np.float32)
    return {
        "speech_en (3.4 s)": (en, "en"),
        "speech_de (3.9 s)": (de, "de"),
        "10 s silence + en + 10 s silence": (np.concatenate([quiet, en, quiet]), "en"),
        "60 s digital silence": (np.zeros(60 * RATE, dtype=np.float32), None),
        "60 s noise at -60 dBFS": (noise, None),
        "5 min digital silence": (np.zeros(300 * RATE, dtype=np.float32), None),
    }


def main() -> int:
    from deployments.whisper.engine import WhisperEngine  # noqa: PLC0415 - heavy import

    parser = argparse.ArgumentParser()
    parser.add_argument("--models", nargs="+", default=["whisper-base", "whisper-tiny.en"])
    args = parser.parse_args()
    for model in args.models:
        options = engine_options(model)
        for vad in (False, True):
            engine = WhisperEngine(str(ROOT / "models" / model), {**options, "vad_filter": vad})
            print(f"\n{model}, vad_filter={vad}")
            for name, (audio, language) in clips().items():
                if language == "de" and not engine.multilingual:
                    continue
                start = time.perf_counter()
                transcript = engine.transcribe(
                    audio,
                    task="transcribe",
                    language=language if engine.multilingual else "en",
                    prompt=None,
                    temperature=None,
                    word_timestamps=False,
                )
                text = "".join(s["text"] for s in transcript.segments).strip()
                seconds = time.perf_counter() - start
                shown = text if len(text) < 70 else text[:67] + "..."
                print(f"  {name:34} {seconds:6.2f} s  {shown!r}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
