"""Transcript renderers: exact SRT/WebVTT, verbose_json per OpenAI's schema."""

import json

from deployments.common.contracts import JSONFrame, TextFrame
from deployments.whisper.formats import (
    delta_event,
    done_event,
    render,
    timestamp,
    to_srt,
    to_verbose_json,
    to_vtt,
)
from tests.openai_schema import validate


def segment(i, start, end, text, words=None):
    return {
        "id": i,
        "seek": int(start * 100),
        "start": start,
        "end": end,
        "text": text,
        "tokens": [50364, 440, 50414],
        "temperature": 0.0,
        "avg_logprob": -0.25,
        "compression_ratio": 1.1,
        "no_speech_prob": 0.01,
        "words": words,
    }


SEGMENTS = [
    segment(0, 0.0, 2.5, " Hello there.", [{"word": "Hello", "start": 0.0, "end": 0.8}]),
    segment(1, 2.5, 3661.0456, " General Kenobi!", [{"word": "General", "start": 2.6, "end": 3.0}]),
]


def test_timestamps():
    assert timestamp(0, ",") == "00:00:00,000"
    assert timestamp(3661.0456, ",") == "01:01:01,046"
    assert timestamp(59.9999, ".") == "00:01:00.000"
    assert timestamp(-0.1, ".") == "00:00:00.000"


def test_srt_is_exact():
    assert to_srt(SEGMENTS) == (
        "1\n00:00:00,000 --> 00:00:02,500\nHello there.\n\n"
        "2\n00:00:02,500 --> 01:01:01,046\nGeneral Kenobi!\n"
    )


def test_vtt_is_exact():
    assert to_vtt(SEGMENTS) == (
        "WEBVTT\n\n"
        "00:00:00.000 --> 00:00:02.500\nHello there.\n\n"
        "00:00:02.500 --> 01:01:01.046\nGeneral Kenobi!\n"
    )


def test_verbose_json_schema_and_granularities():
    both = to_verbose_json("transcribe", "en", 3661.05, SEGMENTS, ["segment", "word"])
    validate(both, "CreateTranscriptionResponseVerboseJson")
    assert both["language"] == "english"
    assert both["text"] == "Hello there. General Kenobi!"
    assert [w["word"] for w in both["words"]] == ["Hello", "General"]
    assert all("words" not in s for s in both["segments"])
    words_only = to_verbose_json("transcribe", "de", 1.0, SEGMENTS, ["word"])
    assert "segments" not in words_only and words_only["language"] == "german"
    default = to_verbose_json("translate", "de", 1.0, SEGMENTS, [])
    validate(default, "CreateTranslationResponseVerboseJson")
    assert "words" not in default and len(default["segments"]) == 2


def test_render_picks_the_format():
    json_frame = render("json", "transcribe", "en", 3.0, SEGMENTS, [])
    assert isinstance(json_frame, JSONFrame)
    validate(json_frame.body, "CreateTranscriptionResponseJson")
    translation = render("json", "translate", "en", 3.0, SEGMENTS, []).body
    validate(translation, "CreateTranslationResponseJson")
    assert translation == {"text": "Hello there. General Kenobi!"}
    text = render("text", "transcribe", "en", 3.0, SEGMENTS, [])
    assert isinstance(text, TextFrame) and text.text == "Hello there. General Kenobi!\n"
    assert render("vtt", "transcribe", "en", 3.0, SEGMENTS, []).media_type == "text/vtt"
    assert render("srt", "transcribe", "en", 3.0, [], []).text == ""


def test_stream_events_match_schema():
    for frame in (delta_event(" Hello"), done_event("Hello there.")):
        validate(json.loads(frame.data), "CreateTranscriptionResponseStreamEvent")
