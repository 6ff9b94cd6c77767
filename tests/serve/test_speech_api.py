"""End to end: real Serve, audio pool + faster-whisper replicas, the official openai SDK."""

import concurrent.futures
import json
import re
import uuid

import httpx
import numpy as np
import openai
import pytest
from openai import OpenAI

from tests.audio_files import CONTAINERS, SPEECH_DE, SPEECH_EN, silence_flac, transcode, wav_bytes
from tests.openai_schema import validate
from tests.serve.conftest import model_handle
from tests.serve.test_llm_api import sse_events
from tests.waiting import wait_until

pytestmark = pytest.mark.serve

SRT_BLOCK = re.compile(r"^(\d+)\n(\d\d:\d\d:\d\d,\d\d\d) --> (\d\d:\d\d:\d\d,\d\d\d)\n(.+)$")
VTT_CUE = re.compile(r"^(\d\d:\d\d:\d\d\.\d\d\d) --> (\d\d:\d\d:\d\d\.\d\d\d)\n(.+)$")


def seconds(stamp: str) -> float:
    hours, minutes, rest = stamp.replace(",", ".").split(":")
    return int(hours) * 3600 + int(minutes) * 60 + float(rest)


def assert_fox(text: str) -> None:
    lowered = text.lower()
    assert "quick" in lowered and "fox" in lowered, text


def transcribe(client: OpenAI, **kwargs):
    with SPEECH_EN.open("rb") as audio:
        return client.audio.transcriptions.create(file=audio, **kwargs)


def test_models_list_speech_models(client: OpenAI, http: httpx.Client):
    cards = {m["id"]: m for m in http.get("/v1/models").json()["data"]}
    assert cards["whisper-base"]["type"] == "stt"
    assert cards["whisper-tiny.en"]["type"] == "stt"
    assert client.models.retrieve("whisper-1").id == "whisper-base"


def test_json_and_text(client: OpenAI, http: httpx.Client):
    result = transcribe(client, model="whisper-1")
    assert_fox(result.text)
    assert_fox(transcribe(client, model="whisper-1", response_format="text"))
    raw = http.post(
        "/v1/audio/transcriptions",
        files={"file": ("a.wav", SPEECH_EN.read_bytes())},
        data={"model": "whisper-1"},
    )
    validate(raw.json(), "CreateTranscriptionResponseJson")


def test_srt_is_well_formed(client: OpenAI):
    srt = transcribe(client, model="whisper-1", response_format="srt")
    blocks = srt.strip("\n").split("\n\n")
    previous_end = 0.0
    for number, block in enumerate(blocks, start=1):
        match = SRT_BLOCK.match(block)
        assert match, block
        assert int(match[1]) == number
        start, end = seconds(match[2]), seconds(match[3])
        assert previous_end <= start <= end
        previous_end = end
    assert_fox(" ".join(SRT_BLOCK.match(b)[4] for b in blocks))


def test_vtt_is_well_formed(client: OpenAI):
    vtt = transcribe(client, model="whisper-1", response_format="vtt")
    assert vtt.startswith("WEBVTT\n\n")
    cues = vtt.removeprefix("WEBVTT\n\n").strip("\n").split("\n\n")
    for cue in cues:
        match = VTT_CUE.match(cue)
        assert match, cue
        assert seconds(match[1]) <= seconds(match[2])
    assert_fox(" ".join(VTT_CUE.match(c)[3] for c in cues))


def test_verbose_json_with_words(client: OpenAI, http: httpx.Client):
    result = transcribe(
        client,
        model="whisper-1",
        response_format="verbose_json",
        timestamp_granularities=["word", "segment"],
    )
    assert result.language == "english"
    assert result.duration == pytest.approx(3.44, abs=0.05)
    assert_fox(result.text)
    assert result.segments and result.words
    starts = [w.start for w in result.words]
    assert starts == sorted(starts)
    first, last = result.segments[0], result.segments[-1]
    for word in result.words:
        assert word.start <= word.end
        assert first.start - 0.01 <= word.start and word.end <= last.end + 0.01
    raw = http.post(
        "/v1/audio/transcriptions",
        files={"file": ("a.wav", SPEECH_EN.read_bytes())},
        data={
            "model": "whisper-base",
            "response_format": "verbose_json",
            "timestamp_granularities[]": ["word", "segment"],
        },
    ).json()
    validate(raw, "CreateTranscriptionResponseVerboseJson")
    assert set(raw["segments"][0]) >= {
        "id", "seek", "start", "end", "text", "tokens", "temperature",
        "avg_logprob", "compression_ratio", "no_speech_prob",
    }  # fmt: skip


@pytest.mark.parametrize("extension", sorted(CONTAINERS))
def test_every_container(client: OpenAI, extension: str):
    data = transcode(SPEECH_EN, extension, layout="stereo")
    result = client.audio.transcriptions.create(
        model="whisper-1", file=(f"speech.{extension}", data)
    )
    assert_fox(result.text)


def test_language_detection_reports_german(client: OpenAI):
    with SPEECH_DE.open("rb") as audio:
        result = client.audio.transcriptions.create(
            model="whisper-base", file=audio, response_format="verbose_json"
        )
    assert result.language == "german"
    assert "kaffee" in result.text.lower()


def test_translation_returns_english(client: OpenAI, http: httpx.Client):
    with SPEECH_DE.open("rb") as audio:
        result = client.audio.translations.create(model="whisper-1", file=audio)
    assert "coffee" in result.text.lower()
    assert "kaffee" not in result.text.lower()
    raw = http.post(
        "/v1/audio/translations",
        files={"file": ("de.wav", SPEECH_DE.read_bytes())},
        data={"model": "whisper-1", "response_format": "verbose_json"},
    ).json()
    validate(raw, "CreateTranslationResponseVerboseJson")
    assert raw["language"] == "german" and raw["task"] == "translate"


def test_streaming_matches_non_streaming(client: OpenAI, http: httpx.Client):
    full = transcribe(client, model="whisper-tiny.en").text
    with SPEECH_EN.open("rb") as audio:
        events = list(
            client.audio.transcriptions.create(model="whisper-tiny.en", file=audio, stream=True)
        )
    deltas = [e.delta for e in events if e.type == "transcript.text.delta"]
    done = [e for e in events if e.type == "transcript.text.done"]
    assert len(done) == 1 and events[-1].type == "transcript.text.done"
    assert done[0].text == full == "".join(deltas).strip()
    raw = http.post(
        "/v1/audio/transcriptions",
        files={"file": ("a.wav", SPEECH_EN.read_bytes())},
        data={"model": "whisper-tiny.en", "stream": "true"},
    )
    for event in sse_events(raw):
        validate(json.loads(event), "CreateTranscriptionResponseStreamEvent")


def test_english_only_model_refuses_translation(client: OpenAI):
    with SPEECH_DE.open("rb") as audio, pytest.raises(openai.BadRequestError) as info:
        client.audio.translations.create(model="whisper-tiny.en", file=audio)
    assert "English-only" in info.value.message


@pytest.mark.parametrize(
    ("content", "status"),
    [
        (b"", 400),
        (b"this is a text file, not audio" * 50, 400),
        (b"RIFF\x24\x00\x00\x00WAVEfmt ", 400),
        (b"\x00" * (26 * 1024 * 1024), 413),
    ],
)
def test_bad_uploads_get_envelopes(http: httpx.Client, content: bytes, status: int):
    response = http.post(
        "/v1/audio/transcriptions",
        files={"file": ("bad.wav", content)},
        data={"model": "whisper-1"},
    )
    assert response.status_code == status, response.text
    validate(response.json(), "ErrorResponse")
    if status == 400:
        assert "could not be decoded" in response.json()["error"]["message"]


def test_truncated_mp4_is_400(http: httpx.Client):
    data = transcode(SPEECH_EN, "mp4")[:300]
    response = http.post(
        "/v1/audio/transcriptions", files={"file": ("cut.mp4", data)}, data={"model": "whisper-1"}
    )
    assert response.status_code == 400


def test_model_family_mismatch_and_unknown(client: OpenAI):
    with pytest.raises(openai.BadRequestError):
        transcribe(client, model="smollm2-135m-instruct")
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(
            model="whisper-1", messages=[{"role": "user", "content": "hi"}]
        )
    with pytest.raises(openai.NotFoundError):
        transcribe(client, model="whisper-9")


def test_a_silence_bomb_is_decoded_bounded_and_transcribed_as_nothing(client: OpenAI):
    """Ten minutes of digital silence at 384 kHz (110 KB of FLAC): the audio pool resamples
    while decoding (its memory is the 16 kHz output), and voice-activity filtering finds no
    speech, so nothing is invented (without it: "You You You ...")."""
    bomb = silence_flac(600)
    for model in ("whisper-base", "whisper-tiny.en"):
        result = client.audio.transcriptions.create(
            model=model, file=("silence.flac", bomb), response_format="verbose_json"
        )
        assert result.text.strip() == "" and not result.segments, result.text
        assert result.duration == pytest.approx(600, abs=0.1)


def test_concurrent_transcriptions_share_model_batches(client: OpenAI):
    """Windows of concurrent requests are decoded together (Serve's @serve.batch), each
    request still getting its own transcript."""

    whisper = model_handle("whisper-whisper-tiny-en")
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        texts = list(pool.map(lambda _: transcribe(client, model="whisper-tiny.en").text, range(6)))
    for text in texts:
        assert_fox(text)
    sizes = whisper.stats.remote().result()["batch_sizes"]
    assert max(sizes) > 1, sizes


def test_batched_requests_each_get_their_own_transcript(client: OpenAI):
    """English transcription, German transcription and German translation at once on the
    one whisper-base replica, while the model is busy with a longer recording, so that their
    windows wait and go to the model in one batch of different kinds: the replica's stats
    show, per request id, that every window of each of the three went to the model in a call
    with another request's windows (and none did when each ran alone), and each answer is
    the one the same request gets alone."""
    from tests.speech_corpus import RATE, render, require_espeak

    require_espeak("the busy recording")
    whisper = model_handle("whisper-whisper-base")
    busy_clip = wav_bytes(render("workshop").samples[: 30 * RATE], RATE)  # one full window
    run = uuid.uuid4().hex[:12]  # request ids of this run: the replica's stats name them

    def request_id(name: str, phase: str) -> str:
        return f"batching-{run}-{name.replace('>', '')}-{phase}"

    def busy() -> str:
        audio = ("busy.wav", busy_clip)
        return client.audio.transcriptions.create(model="whisper-base", file=audio).text

    calls = {
        "en": lambda headers: transcribe(client, model="whisper-base", extra_headers=headers).text,
        "de": lambda headers: (
            client.audio.transcriptions.create(
                model="whisper-base", file=SPEECH_DE.open("rb"), extra_headers=headers
            ).text
        ),
        "de->en": lambda headers: (
            client.audio.translations.create(
                model="whisper-base", file=SPEECH_DE.open("rb"), extra_headers=headers
            ).text
        ),
    }

    def run_call(name: str, phase: str) -> str:
        return calls[name]({"x-request-id": request_id(name, phase)})

    start = whisper.stats.remote().result()
    alone = {name: run_call(name, "alone") for name in calls}
    assert "fox" in alone["en"].lower() and "kaffee" in alone["de"].lower()
    assert "coffee" in alone["de->en"].lower()
    middle = whisper.stats.remote().result()
    busy()
    before = whisper.stats.remote().result()

    with concurrent.futures.ThreadPoolExecutor(len(calls) + 1) as pool:
        busy_answer = pool.submit(busy)
        wait_until(lambda: whisper.stats.remote().result()["decoding"], 30, "the model busy")
        futures = {name: pool.submit(run_call, name, "together") for name in calls}
        answers = {name: future.result() for name, future in futures.items()}
        busy_answer.result()
    assert answers == alone
    after = whisper.stats.remote().result()
    assert after["mixed_batches"] > before["mixed_batches"], "no batch held different kinds"
    requests = after["requests"]
    for name in calls:  # {"windows": handed to the model, "shared": with another request's}
        by_itself = requests[request_id(name, "alone")]
        together = requests[request_id(name, "together")]
        assert by_itself["windows"] >= 1 and by_itself["shared"] == 0, (name, requests)
        own = by_itself["windows"]  # the same audio: the same windows
        assert together == {"windows": own, "shared": own}, (
            f"{name}: not every window went to the model with another request's",
            after["batch_sizes"],
            requests,
        )
    windows = after["windows_decoded"] - before["windows_decoded"]
    alone_windows = middle["windows_decoded"] - start["windows_decoded"]
    busy_windows = before["windows_decoded"] - middle["windows_decoded"]
    assert windows == alone_windows + busy_windows  # nothing decoded twice
    assert after["active"] == 0 and not after["decoding"]


def test_faint_noise_is_no_speech_and_decodes_nothing(client: OpenAI):
    """A minute of hiss at -50 dBFS (not digital zeros): the VAD finds no speech, so the
    answer is empty text and the model decodes no window (without the VAD, Whisper invents
    words after a minute of decoding: bench/silence_bench.py)."""

    whisper = model_handle("whisper-whisper-base")
    hiss = np.random.default_rng(0).normal(0, 10 ** (-50 / 20), 60 * 16_000)
    before = whisper.stats.remote().result()["windows_decoded"]
    result = client.audio.transcriptions.create(
        model="whisper-base", file=("hiss.wav", wav_bytes(hiss, 16_000)),
        response_format="verbose_json",
    )  # fmt: skip
    assert result.text == "" and not result.segments
    assert result.duration == pytest.approx(60, abs=0.01)
    assert whisper.stats.remote().result()["windows_decoded"] == before
