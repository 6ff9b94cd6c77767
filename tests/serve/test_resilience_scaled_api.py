"""Issue 35's soak, proven on the running app: with the ingress, both Whisper models and the
audio pool at their max_replicas on the default's 2-CPU node, a killed LLM or Whisper replica
is replaced within seconds (serve_app/capacity.py keeps room for it)."""

import concurrent.futures
import contextlib
import json
import os
import signal
import threading
import time

import httpx
import pytest

from tests.serve.conftest import RESCALABLE, ROOT, model_handle, rescaled
from tests.serve.replicas import (
    LLM_DEPLOYMENT,
    chat_ok,
    redeployed,
    replica_pids,
    running,
    stream_events,
)
from tests.waiting import wait_until

pytestmark = pytest.mark.serve

# Serve does not preempt: the killed
# replica's replacement is scheduled only if the plan left room for it (serve_app/capacity.py).
AT_MAX = {"whisper-whisper-base": 2, "whisper-whisper-tiny-en": 2, "audio-preprocessor": 4}
SCHEDULED_WITHIN_S = 15  # from the kill to the replacement's process: what is not cold start
SHORT = ROOT / "tests/fixtures/speech_en.wav"


def transcribe(http: httpx.Client, model: str) -> int:
    files = {"file": ("a.wav", SHORT.read_bytes())}
    response = http.post("/v1/audio/transcriptions", files=files, data={"model": model})
    assert response.status_code != 200 or "fox" in response.json()["text"].lower()
    return response.status_code


def speech_load(http: httpx.Client, models: tuple[str, ...], stop: threading.Event) -> list[int]:
    """Transcriptions on ``models`` in turn until ``stop``; their statuses."""
    statuses = []
    while not stop.is_set():
        statuses.extend(transcribe(http, model) for model in models)
    return statuses


@contextlib.contextmanager
def everything_at_max(http: httpx.Client, base_url: str):
    """The ingress (2 replicas all session), both Whisper models and the audio pool at their
    max_replicas, reached under speech load; back to the session's config after."""
    port = int(base_url.rsplit(":", 1)[1])
    stop = threading.Event()
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        loads = [pool.submit(speech_load, http, ("whisper-tiny.en", "whisper-base"), stop)]
        loads.append(pool.submit(speech_load, http, ("whisper-base",), stop))
        try:
            redeployed(port, rescaled(AT_MAX))
            wait_until(
                lambda: all(running(d) == n for d, n in AT_MAX.items()),
                180,
                f"{AT_MAX} running replicas (the plan leaves room for every one)",
            )
        finally:
            stop.set()
        statuses = [status for load in loads for status in load.result(timeout=120)]
    assert statuses and set(statuses) == {200}, statuses
    try:
        yield
    finally:
        redeployed(port, rescaled(dict.fromkeys(RESCALABLE, 1)))
        wait_until(
            lambda: all(len(replica_pids(d)) == 1 for d in RESCALABLE), 120, "one replica each"
        )
        redeployed(port)


def replacement(deployment: str, killed: int, before: set[int]) -> int:
    """The process of ``deployment``'s replica started after ``killed``'s death, once Ray has
    scheduled it (a replica process takes its title when its actor is placed)."""
    new = wait_until(
        lambda: set(replica_pids(deployment)) - before,
        SCHEDULED_WITHIN_S,
        f"the replacement of {deployment}'s killed replica {killed} to be scheduled",
    )
    (pid,) = new
    return pid


def test_a_killed_llm_comes_back_while_speech_is_at_max(http: httpx.Client, base_url: str):
    with everything_at_max(http, base_url):
        stop = threading.Event()
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            speech = pool.submit(speech_load, http, ("whisper-tiny.en",), stop)
            (pid,) = replica_pids(LLM_DEPLOYMENT)
            os.kill(pid, signal.SIGKILL)
            killed_at = time.monotonic()
            try:
                replacement(LLM_DEPLOYMENT, pid, {pid})
                scheduled_at = time.monotonic()
                wait_until(lambda: chat_ok(http), 240, "chat on the replacement LLM replica")
            finally:
                stop.set()
            statuses = speech.result(timeout=120)
        answered_at = time.monotonic()
        # Within the LLM's cold start (its replacement's start to its first answer) + 15 s.
        assert answered_at - killed_at <= (answered_at - scheduled_at) + SCHEDULED_WITHIN_S
        assert statuses and set(statuses) == {200}, "speech suffered from the LLM's death"
        assert all(len(replica_pids(d)) == n for d, n in AT_MAX.items()), "nothing was preempted"


def test_a_killed_whisper_replica_comes_back_while_the_llm_is_busy(
    http: httpx.Client, base_url: str
):
    llm = model_handle(LLM_DEPLOYMENT)
    deployment = "whisper-whisper-tiny-en"
    with everything_at_max(http, base_url), concurrent.futures.ThreadPoolExecutor(2) as pool:
        streams = [pool.submit(stream_events, http, 400) for _ in range(2)]
        wait_until(lambda: llm.num_unfinished_requests.remote().result() >= 2, 30, "streams")
        before = set(replica_pids(deployment))
        victim = min(before)
        os.kill(victim, signal.SIGKILL)
        replacement(deployment, victim, before)
        wait_until(lambda: transcribe(http, "whisper-tiny.en") == 200, 120, "whisper-tiny.en")
        wait_until(lambda: len(replica_pids(deployment)) == 2, 60, "two whisper-tiny.en replicas")
        for future in streams:
            status, events, _ = future.result(timeout=180)
            assert status == 200 and events[-1] == "[DONE]"
            assert json.loads(events[-2])["choices"][0]["finish_reason"] == "length"
