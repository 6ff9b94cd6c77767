"""Render transcripts in OpenAI's response formats: json, text, verbose_json, srt, vtt.

Pure functions over the segment dicts the Whisper engine yields.
"""

import json
from typing import Any

from deployments.common.contracts import ChunkFrame, Frame, JSONFrame, TextFrame
from deployments.whisper.languages import LANGUAGES

RESPONSE_FORMATS = ("json", "text", "srt", "verbose_json", "vtt")


def full_text(segments: list[dict[str, Any]]) -> str:
    return "".join(seg["text"] for seg in segments).strip()


def timestamp(seconds: float, separator: str) -> str:
    """``HH:MM:SS<sep>mmm`` (``,`` for SRT, ``.`` for WebVTT)."""
    millis = max(0, round(seconds * 1000))
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{separator}{millis:03d}"


def to_srt(segments: list[dict[str, Any]]) -> str:
    blocks = [
        f"{i}\n{timestamp(s['start'], ',')} --> {timestamp(s['end'], ',')}\n{s['text'].strip()}\n"
        for i, s in enumerate(segments, start=1)
    ]
    return "\n".join(blocks)


def to_vtt(segments: list[dict[str, Any]]) -> str:
    blocks = [
        f"{timestamp(s['start'], '.')} --> {timestamp(s['end'], '.')}\n{s['text'].strip()}\n"
        for s in segments
    ]
    return "\n".join(["WEBVTT\n", *blocks])


def to_verbose_json(
    task: str,
    language: str,
    duration_s: float,
    segments: list[dict[str, Any]],
    granularities: list[str],
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "task": task,
        "language": LANGUAGES.get(language, language),
        "duration": round(duration_s, 3),
        "text": full_text(segments),
    }
    if "segment" in granularities or not granularities:
        body["segments"] = [{k: v for k, v in s.items() if k != "words"} for s in segments]
    if "word" in granularities:
        body["words"] = [w for s in segments for w in (s["words"] or [])]
    if task == "transcribe":
        body["usage"] = {"type": "duration", "seconds": round(duration_s, 3)}
    return body


def render(
    response_format: str,
    task: str,
    language: str,
    duration_s: float,
    segments: list[dict[str, Any]],
    granularities: list[str],
) -> Frame:
    """The whole (non-streaming) response for ``response_format``; usage is the duration."""
    if response_format == "text":
        return TextFrame(full_text(segments) + "\n", usage=audio_usage(duration_s))
    if response_format == "srt":
        return TextFrame(to_srt(segments), usage=audio_usage(duration_s))
    if response_format == "vtt":
        return TextFrame(to_vtt(segments), "text/vtt", usage=audio_usage(duration_s))
    if response_format == "verbose_json":
        body = to_verbose_json(task, language, duration_s, segments, granularities)
        return JSONFrame(body, usage=audio_usage(duration_s))
    body: dict[str, Any] = {"text": full_text(segments)}
    if task == "transcribe":
        body["usage"] = {"type": "duration", "seconds": round(duration_s, 3)}
    return JSONFrame(body, usage=audio_usage(duration_s))


def delta_event(text: str) -> ChunkFrame:
    return ChunkFrame(json.dumps({"type": "transcript.text.delta", "delta": text}))


def done_event(text: str) -> ChunkFrame:
    return ChunkFrame(json.dumps({"type": "transcript.text.done", "text": text}))


def audio_usage(duration_s: float) -> dict[str, float]:
    return {"audio_seconds": duration_s} if duration_s > 0 else {}


def segment_dict(index: int, segment: Any) -> dict[str, Any]:
    """faster-whisper's ``Segment`` as OpenAI's verbose_json segment (plus its words)."""
    words = None
    if segment.words is not None:
        words = [
            {"word": w.word.strip(), "start": secs(w.start), "end": secs(w.end)}
            for w in segment.words
        ]
    return {
        "id": index,
        "seek": segment.seek,
        "start": secs(segment.start),
        "end": secs(segment.end),
        "text": segment.text,
        "tokens": list(segment.tokens),
        "temperature": segment.temperature,
        "avg_logprob": segment.avg_logprob,
        "compression_ratio": segment.compression_ratio,
        "no_speech_prob": segment.no_speech_prob,
        "words": words,
    }


def secs(value: float) -> float:
    return round(float(value), 3)
