"""Speech: decode time per minute of audio; Whisper through the API vs faster-whisper itself.

Prints: decode+resample seconds per minute of audio for each container (PyAV + soxr, in
process); for each long recording of the speech corpus (``tests/speech_corpus.py``, espeak-ng,
known text), the seconds and word error rate of a transcription through `serve run` with the
official openai SDK, next to faster-whisper in process on the same model files: its
sequential ``transcribe`` (VAD on, beam 5, as the API decodes), once beside the server (up and
idle: the machine as the API had it) and once alone (server stopped), and its
``BatchedInferencePipeline`` (batch 8, alone); then 8 five-second clips one after another vs all at
once through the API, with the batch sizes the Whisper replica reached; then, in process, what
batching can gain at most: a window's encoder and decoder seconds alone and in a batch of 8.
Figures, not assertions.

    .venv/bin/python -m bench.speech_bench [--runs 3] [--model whisper-base]
"""

import argparse
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from openai import OpenAI

from bench.server import ROOT, engine_options, running_server
from deployments.audio.decode import decode_audio
from tests import speech_corpus
from tests.audio_files import CONTAINERS, SPEECH_EN, transcode, wav_bytes

RATE = 16_000


def minute_clip(seconds: float = 60.0) -> bytes:
    """The fixture repeated with half-second pauses up to ``seconds``, as 16 kHz WAV."""
    speech = decode_audio(SPEECH_EN.read_bytes())
    pause = np.zeros(RATE // 2, dtype=np.float32)
    pieces, total = [], 0
    while total < seconds * RATE:
        pieces += [speech, pause]
        total += len(speech) + len(pause)
    return wav_bytes(np.concatenate(pieces)[: int(seconds * RATE)], RATE)


def timed(fn, runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def concurrent_clips(server, client: OpenAI, model: str, runs: int, n: int = 8) -> str:
    """``n`` 5-second clips one after another vs all at once through the API, and the
    batch sizes the Whisper replica reached (its ``whisper_batch_size`` metric)."""
    clip = minute_clip(5.0)

    def one(_: object = None) -> None:
        client.audio.transcriptions.create(model=model, file=("clip.wav", clip))

    def at_once() -> None:
        with ThreadPoolExecutor(n) as pool:
            list(pool.map(one, range(n)))

    sequential = timed(lambda: [one() for _ in range(n)], runs)
    before = batch_histogram(server, model)
    together = timed(at_once, runs)
    time.sleep(12)  # Ray exports metrics every 10 s
    after = batch_histogram(server, model)
    sizes = {le: after.get(le, 0) - before.get(le, 0) for le in after}
    lines = [
        f"{model}, {n} clips of 5 s (median of {runs}):",
        f"  one after another: {sequential:.2f} s",
        f"  all at once:       {together:.2f} s  ({sequential / together:.2f}x)",
        "  model calls by batch size while all at once (windows per call <= le): "
        + ", ".join(f"<={le}: {count:g}" for le, count in sizes.items() if count),
    ]
    return "\n".join(lines)


def batching_ceiling(engine, runs: int, n: int = 8) -> str:
    """Seconds per 30-second window (a 5-second clip, padded as Whisper pads it) for the
    encoder and for the whole decode, one window per call vs ``n`` in one call: what
    cross-request batching can save at most on this machine."""
    clip = decode_audio(minute_clip(5.0))
    windows = []

    def keep(batch):  # the request's windows, as the deployment's batcher would get them
        windows.extend(batch)
        return engine.decode_windows(batch)

    transcript = engine.transcribe(
        clip, task="transcribe", language=None, prompt=None, temperature=None,
        word_timestamps=False, decode=keep,
    )  # fmt: skip
    list(transcript.segments)
    window = windows[0]
    per_window = {}
    for size in (1, n):
        features = np.stack([window.features] * size)
        encode = timed(lambda f=features: engine.model.encode(f), runs) / size
        whole = timed(lambda s=size: engine.decode_windows([window] * s), runs) / size
        per_window[size] = (encode, whole - encode)
    lines = [f"seconds per window, in process (median of {runs}):"]
    for size, (encode, decode) in per_window.items():
        lines.append(f"  {size} per call: encoder {encode:.3f}, decoder {decode:.3f}")
    alone, batched = (sum(per_window[size]) for size in (1, n))
    lines.append(f"  most that batching {n} windows can gain: {alone / batched:.2f}x")
    return "\n".join(lines)


def batch_histogram(server, model: str) -> dict[str, float]:
    """Count of the replicas' model calls per batch-size bucket (``le``)."""
    samples = server.metric("ray_whisper_batch_size_bucket", model=model)
    totals: dict[str, float] = {}
    for labels, value in samples:
        totals[labels["le"]] = totals.get(labels["le"], 0) + value
    previous, counts = 0.0, {}
    for le in sorted(totals, key=float):  # cumulative -> per bucket
        counts[le], previous = totals[le] - previous, totals[le]
    return counts


def in_process(model: str):
    """faster-whisper on ``model``'s files with the shipped config's options: its sequential
    ``transcribe`` and its ``BatchedInferencePipeline`` (batch 8), each ``samples -> text``."""
    from faster_whisper import BatchedInferencePipeline, WhisperModel

    options = engine_options(model)
    whisper = WhisperModel(
        str(ROOT / "models" / model),
        device="cpu",
        compute_type=options["compute_type"],
        cpu_threads=options["cpu_threads"],
        local_files_only=True,
    )
    batched, beam = BatchedInferencePipeline(whisper), options["beam_size"]

    def sequential(samples: np.ndarray) -> str:
        segments, _ = whisper.transcribe(samples, beam_size=beam, vad_filter=True)
        return "".join(s.text for s in segments)

    def in_batches(samples: np.ndarray) -> str:
        segments, _ = batched.transcribe(samples, beam_size=beam, batch_size=8)
        return "".join(s.text for s in segments)

    return sequential, in_batches


def time_text(transcribe, name: str, runs: int) -> tuple[float, str]:
    """Median seconds of ``transcribe`` on recording ``name``, and its text."""
    samples, text = speech_corpus.render(name).samples, []
    seconds = timed(lambda: text.append(transcribe(samples)), runs)
    return seconds, text[-1]


def corpus_table(model: str, columns: dict[str, dict[str, tuple[float, str]]], runs: int) -> str:
    """Per recording: seconds and word error rate % of each column (name -> seconds, text)."""
    names = next(iter(columns.values()))
    head = "".join(f" {title:>15}" for title in columns)
    lines = [
        f"{model}: seconds (median of {runs}) and word error rate %, per recording",
        f"  {'recording':16} {'audio s':>7}{head}  API/sequential",
    ]
    for name in names:
        known = speech_corpus.text(name)
        audio_s = len(speech_corpus.render(name).samples) / RATE
        cells = "".join(
            f" {seconds:8.1f} ({speech_corpus.word_error_rate(known, text):4.1f})"
            for seconds, text in (column[name] for column in columns.values())
        )
        ratios = " / ".join(
            f"{columns['API'][name][0] / columns[title][name][0]:.2f}"
            for title in columns
            if title.startswith("sequential")
        )
        lines.append(f"  {name:16} {audio_s:7.1f}{cells}  {ratios}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--model", default="whisper-base")
    args = parser.parse_args()
    clip = minute_clip()
    seconds = len(decode_audio(clip)) / RATE
    print(f"decode + resample to 16 kHz mono, seconds per minute of audio (median of {args.runs}):")
    for ext in sorted(CONTAINERS):
        data = transcode(clip, ext)
        cost = timed(lambda data=data: decode_audio(data), args.runs)
        print(f"  {ext:5} {cost * 60 / seconds:6.3f} s  ({len(data) / 1024:.0f} KiB)")

    names = [n for n in speech_corpus.ACCURACY if args.model != "whisper-tiny.en" or n != "german"]
    sequential, in_batches = in_process(args.model)
    columns: dict[str, dict[str, tuple[float, str]]] = {"API": {}, "sequential, beside": {}}
    with running_server() as server:
        client = OpenAI(base_url=f"{server.url}/v1", api_key="x", max_retries=0, timeout=600)

        def via_api(samples: np.ndarray) -> str:
            wav = wav_bytes(samples, RATE)
            return client.audio.transcriptions.create(model=args.model, file=("a.wav", wav)).text

        for name in names:
            via_api(speech_corpus.render(name).samples)  # warm-up
            columns["API"][name] = time_text(via_api, name, args.runs)
            # The reference on the same machine with the server up and idle beside it.
            columns["sequential, beside"][name] = time_text(sequential, name, args.runs)
        batching = concurrent_clips(server, client, args.model, args.runs)
    columns["sequential, alone"] = {n: time_text(sequential, n, args.runs) for n in names}
    columns["batched, alone"] = {n: time_text(in_batches, n, args.runs) for n in names}
    print(corpus_table(args.model, columns, args.runs))
    print(batching)
    from deployments.whisper.engine import WhisperEngine

    engine = WhisperEngine(str(ROOT / "models" / args.model), engine_options(args.model))
    print(batching_ceiling(engine, args.runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
