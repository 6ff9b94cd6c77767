"""Long audio loses no words: minutes of speech with known text (``tests/speech_corpus.py``,
synthesised with espeak-ng) through the API, next to faster-whisper's own sequential
``transcribe`` on the same model files and the same decoded samples, in this process.

Per recording: every sentence is in the transcript (segments overlap it and carry a third of
its English words at least); segments are ordered and do not overlap; word timestamps are
monotonic and within the audio. Word error rates: the API's, pooled over every recording
and both models (1,900 words), is at most 1.5 points above faster-whisper's, and at most 8
above per recording. The two decode alike but drift apart by chance, recording by recording:
the API's features differ from faster-whisper's by float rounding (1e-7, BLAS blocking), and
beam search amplifies that; faster-whisper's own rate on the noisy recording moves from 16.9
to 21.5 % with a ±1e-6 dither on its input. Measured: per recording within ±3 points either
way, pooled within ±1. A lost sentence fails the coverage check whatever the rates.
"""

from collections.abc import Iterator

import numpy as np
import pytest
from openai import OpenAI

from deployments.audio.decode import decode_audio
from deployments.whisper.formats import timestamp
from tests import speech_corpus as corpus
from tests.audio_files import wav_bytes
from tests.serve.conftest import ROOT

pytestmark = pytest.mark.serve

corpus.require_espeak("the recordings", allow_module_level=True)

MODELS = ("whisper-base", "whisper-tiny.en")
ARTIFACTS = ROOT / "test-artifacts"
KEYWORDS_DE_EN = ("coffee", "dog", "park", "winter", "sister", "teacher", "market", "garden")


def upload(name: str) -> tuple[str, bytes]:
    return (f"{name}.wav", wav_bytes(corpus.render(name).samples, corpus.RATE))


def uploaded_samples(name: str) -> np.ndarray:
    """What the Whisper replica gets for ``upload(name)``: the 16-bit WAV, decoded."""
    return decode_audio(upload(name)[1])


def speech_words(text: str) -> list[str]:
    return corpus.normalise(text).split()


def reference_transcribe(model: str, name: str, task: str, temperature: float = 0.0) -> str:
    """faster-whisper's sequential ``transcribe`` as its README runs it (VAD on, beam 5)."""
    from faster_whisper import WhisperModel

    engine = WhisperModel(
        str(ROOT / "models" / model), device="cpu", compute_type="int8", cpu_threads=2,
        local_files_only=True,
    )  # fmt: skip
    temperatures = temperature or [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]  # its default: fallback
    segments, _ = engine.transcribe(
        uploaded_samples(name), task=task, beam_size=5, vad_filter=True, temperature=temperatures
    )
    return "".join(s.text for s in segments)


def check_timeline(result, name: str, sampled: bool = False) -> None:
    """Segments ordered and apart, each sentence covered and its words there, word
    timestamps monotonic and inside the audio.

    ``sampled`` (a request at temperature > 0, which Whisper decodes without fallback):
    a sentence may be missing only where the segment before it is a repetition loop
    (compression ratio over Whisper's 2.4), the model's own failure when it samples."""
    rendered = corpus.render(name)
    segments = result.segments
    assert segments, name
    for before, after in zip(segments, segments[1:], strict=False):
        assert before.start <= before.end <= after.start + 0.01, (before, after)
    sentences = corpus.RECORDINGS[name].sentences
    for (start, end), sentence in zip(rendered.spans, sentences, strict=True):
        near = [s for s in segments if min(end, s.end) - max(start, s.start) > 0.3]
        if not near and sampled and looping_before(segments, start):
            continue
        assert near, f"no segment covers {start:.1f}-{end:.1f} s: {sentence!r}"
        heard = set(speech_words(" ".join(s.text for s in near)))
        expected = speech_words(sentence)
        if corpus.RECORDINGS[name].language == "en" and result.task == "transcribe":
            found = sum(w in heard for w in expected)
            assert found >= len(expected) / 3, (sentence, [s.text for s in near])
    words = getattr(result, "words", None)  # translations carry none
    if words:
        starts = [w.start for w in words]
        assert starts == sorted(starts), name
        for word in words:
            assert 0 <= word.start <= word.end <= rendered.duration_s + 0.01, word


def looping_before(segments, start_s: float) -> bool:
    """Whether the last segment to start before ``start_s`` repeats itself."""
    before = [s for s in segments if s.start < start_s]
    return bool(before) and before[-1].compression_ratio > 2.4


@pytest.fixture(scope="module")
def rates() -> Iterator[list[tuple[str, str, str, float, float, int]]]:
    """(model, recording, task, API WER, faster-whisper WER, words): printed at the end."""
    table: list[tuple[str, str, str, float, float, int]] = []
    yield table
    lines = ["word error rate, %: model, recording, task, API, faster-whisper sequential"]
    for model, name, task, api, reference, _ in table:
        lines.append(f"  {model:16} {name:16} {task:10} {api:6.1f} {reference:6.1f}")
    print("\n" + "\n".join(lines))
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "speech_accuracy.txt").write_text("\n".join(lines) + "\n")


def transcribe_cases() -> list[tuple[str, str]]:
    return [
        (model, name)
        for model in MODELS
        for name in corpus.ACCURACY
        if model == "whisper-base" or corpus.RECORDINGS[name].language == "en"
    ]


@pytest.mark.parametrize(("model", "name"), transcribe_cases())
def test_long_audio_is_transcribed_whole(client: OpenAI, rates, model: str, name: str):
    result = client.audio.transcriptions.create(
        model=model,
        file=upload(name),
        response_format="verbose_json",
        timestamp_granularities=["word", "segment"],
    )
    recording = corpus.RECORDINGS[name]
    assert result.language == {"en": "english", "de": "german"}[recording.language]
    assert result.duration == pytest.approx(corpus.render(name).duration_s, abs=0.01)
    check_timeline(result, name)
    known = corpus.text(name)
    api = corpus.word_error_rate(known, result.text)
    reference = corpus.word_error_rate(known, reference_transcribe(model, name, "transcribe"))
    rates.append((model, name, "transcribe", api, reference, len(speech_words(known))))
    assert api <= reference + 8, (api, reference, result.text)


def test_long_audio_is_translated_whole(client: OpenAI, rates):
    """German speech to English: every sentence covered, English out. At temperature 0.2:
    at 0, whisper-base finds its translations of this synthetic German improbable and, as
    faster-whisper's own ``transcribe``, decodes most windows again at every temperature up
    to 1 (20 s a window here, past the session's request timeout). Sampling makes the words
    random: faster-whisper's own ``transcribe`` run four times gave 4, 3, 6 and 1 of the
    keywords, so the test asks for English (few words of the German text) with at least one
    of them. It also lets whisper-base fall into a repetition loop now and then ("at the
    market at the market ...", 1 run in 7 both here and in faster-whisper's own
    ``transcribe``), which swallows what follows in its window: such a loss is excused,
    no other (``check_timeline``). The rate against a reference translation measures
    paraphrase as much as loss: printed, not compared."""
    result = client.audio.translations.create(
        model="whisper-base", file=upload("german"), response_format="verbose_json",
        temperature=0.2,
    )  # fmt: skip
    assert result.language == "german"
    check_timeline(result, "german", sampled=True)
    words = set(speech_words(result.text))
    german = set(speech_words(corpus.text("german")))
    assert len(words & german) <= 0.3 * len(words), result.text  # "in", "am", "park" are both
    assert any(k in words for k in KEYWORDS_DE_EN), result.text
    known = corpus.text("german", translated=True)
    reference = reference_transcribe("whisper-base", "german", "translate", temperature=0.2)
    api_rate = corpus.word_error_rate(known, result.text)
    reference_rate = corpus.word_error_rate(known, reference)
    rates.append(("whisper-base", "german", "translate", api_rate, reference_rate, 0))


def test_pooled_word_error_rate_is_faster_whispers(rates):
    """Over every recording and both models (the transcription cases above)."""
    pooled = [row for row in rates if row[5]]
    assert len(pooled) == len(transcribe_cases()), "run with the transcription cases"
    words = sum(row[5] for row in pooled)
    api = sum(row[3] * row[5] for row in pooled) / words
    reference = sum(row[4] * row[5] for row in pooled) / words
    assert api <= reference + 1.5, (api, reference)


def test_every_response_format_carries_the_whole_transcript(client: OpenAI):
    """A recording across a window boundary: json, text, srt, vtt, verbose_json (with and
    without words) and the stream all hold the same segments and text."""
    name = "lighthouse"
    verbose = client.audio.transcriptions.create(
        model="whisper-base", file=upload(name), response_format="verbose_json"
    )
    assert verbose.duration > 30 and verbose.segments[-1].end > 30
    check_timeline(verbose, name)
    text = verbose.text
    assert client.audio.transcriptions.create(model="whisper-base", file=upload(name)).text == text
    plain = client.audio.transcriptions.create(
        model="whisper-base", file=upload(name), response_format="text"
    )
    assert plain.strip() == text
    worded = client.audio.transcriptions.create(
        model="whisper-base",
        file=upload(name),
        response_format="verbose_json",
        timestamp_granularities=["word"],
    )
    assert worded.text == text
    assert corpus.normalise(" ".join(w.word for w in worded.words)) == corpus.normalise(text)
    for response_format, separator in (("srt", ","), ("vtt", ".")):
        body = client.audio.transcriptions.create(
            model="whisper-base", file=upload(name), response_format=response_format
        )
        cues = [block.splitlines() for block in body.strip().split("\n\n") if " --> " in block]
        assert len(cues) == len(verbose.segments), body
        for lines, segment in zip(cues, verbose.segments, strict=True):
            timing = next(line for line in lines if " --> " in line)
            assert timing.startswith(timestamp(segment.start, separator)), (timing, segment)
            assert lines[-1] == segment.text.strip()
    events = list(
        client.audio.transcriptions.create(model="whisper-base", file=upload(name), stream=True)
    )
    deltas = "".join(e.delta for e in events if e.type == "transcript.text.delta")
    assert deltas.strip() == events[-1].text == text


@pytest.mark.parametrize("language", [None, "ja"])
def test_japanese_word_timestamps_split_on_characters(client: OpenAI, language: str | None):
    """Japanese writes no spaces between words: words are aligned with the Japanese
    tokenizer (characters), also when the language is detected, not one word a sentence."""
    extra = {"language": language} if language else {}
    result = client.audio.transcriptions.create(
        model="whisper-base",
        file=upload("japanese"),
        response_format="verbose_json",
        timestamp_granularities=["word", "segment"],
        **extra,
    )
    assert result.language == "japanese"
    check_timeline(result, "japanese")
    text = result.text.replace(" ", "")
    assert len(result.words) >= len(text) / 2, [w.word for w in result.words]
    assert all(" " not in w.word and len(w.word) <= 4 for w in result.words)
