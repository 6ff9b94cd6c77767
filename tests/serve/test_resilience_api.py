"""Crash recovery, proven on the running app (real processes): replicas killed mid-request and
replaced, and what a waiting call reads of the running replicas. Redeploys and scale-downs:
test_resilience_redeploy_api.py; kills while speech is at its max: test_resilience_scaled_api.py."""

import concurrent.futures
import contextlib
import json
import os
import signal
import threading
import time

import httpx
import psutil
import pytest

from bench.speech_bench import minute_clip
from serve_app.dispatch import _running_replicas
from tests.serve.conftest import ROOT, model_handle
from tests.serve.replicas import (
    LLM_DEPLOYMENT,
    MODEL,
    STORY,
    chat_ok,
    engine_cores,
    replica_pids,
    stream_events,
)
from tests.serve.test_metrics_api import scrape, total
from tests.serve.test_usage_api import ledger
from tests.waiting import wait_until

pytestmark = pytest.mark.serve


def test_llm_replica_killed_under_load_recovers(http: httpx.Client, base_url: str, metrics_url):
    """... and the streams it cut are charged the ingress's estimate (the replica cannot charge
    them): the prompt as vLLM counted it, a token per chunk the client got."""
    since = int(time.time()) - 60
    (pid,) = replica_pids(LLM_DEPLOYMENT)
    # The replica runs its engine core in a child process (once CI found none at first).
    try:
        cores = wait_until(lambda: engine_cores(pid), 30, f"replica {pid}'s engine core")
    except AssertionError as exc:  # say what the replica's children are
        tree = [(p.pid, p.cmdline()) for p in psutil.Process(pid).children(recursive=True)]
        exc.args = (f"{exc}; children: {tree}",)
        raise
    assert len(cores) == 1, cores
    llm = model_handle(LLM_DEPLOYMENT)
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        started = [threading.Event() for _ in range(3)]
        secrets = ["cut-by-a-crash-secret", None, None]
        streams = [
            pool.submit(stream_events, http, 600, event, secret)
            for event, secret in zip(started, secrets, strict=True)
        ]
        unary = pool.submit(
            http.post,
            "/v1/chat/completions",
            json={
                "model": MODEL,
                "messages": [{"role": "user", "content": "Story?"}],
                "max_tokens": 600,
                "ignore_eos": True,  # still running at the kill, whatever the model says
            },  # fmt: skip
        )
        wait_until(lambda: llm.num_unfinished_requests.remote().result() >= 4, 30, "load")
        wait_until(lambda: all(e.is_set() for e in started), 30, "the streams' first events")
        os.kill(pid, signal.SIGKILL)
        killed_at = time.monotonic()
        chunks = []
        for future in streams:
            status, events, ended = future.result(timeout=60)
            assert ended - killed_at < 15, "stream hung after the replica died"
            assert status == 200 and events[-1] == "[DONE]"
            error = json.loads(events[-2])
            assert error["error"]["type"] == "server_error"
            assert "Traceback" not in events[-2] and "pid" not in events[-2]
            chunks.append(len(events) - 2)
        response = unary.result(timeout=60)
        assert response.status_code == 503  # README: a dead replica is a 503 envelope
        assert set(response.json()["error"]) == {"message", "type", "param", "code"}
    wait_until(lambda: chat_ok(http), 240, "a replacement replica")
    (new_pid,) = replica_pids(LLM_DEPLOYMENT)
    assert new_pid != pid
    asked = {"model": MODEL, "messages": STORY, "max_tokens": 1}
    prompt = http.post("/v1/chat/completions", json=asked).json()["usage"]["prompt_tokens"]
    charged = ledger(base_url, "cut-by-a-crash", since)
    assert charged == {"requests": 1, "input": prompt, "output": chunks[0]}
    lost = {"key": "cut-by-a-crash", "kind": "completion", "ended": "lost"}
    wait_until(
        lambda: total(scrape(metrics_url), "ray_openai_api_tokens_total", lost) == chunks[0],
        30,
        "the estimate in Prometheus",
    )
    # The dead replica's engine core went with it (it is not left orphaned, holding memory).
    (core,) = cores
    try:
        wait_until(lambda: not _alive(core), 30, "the orphaned engine core to exit")
    except AssertionError as exc:  # say what it is doing (parent, state)
        with contextlib.suppress(psutil.Error):
            exc.args = (f"{exc}; engine core {core.pid}: {core.ppid()}, {core.status()}",)
        raise


def _alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_whisper_replica_killed_mid_request_recovers(http: httpx.Client):
    (pid,) = replica_pids("whisper-whisper-base")
    whisper = model_handle("whisper-whisper-base")
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pending = pool.submit(
            http.post,
            "/v1/audio/transcriptions",
            files={"file": ("long.wav", minute_clip(600))},  # 20 windows: still running
            data={"model": "whisper-base"},
            timeout=120,
        )
        wait_until(lambda: whisper.stats.remote().result()["active"], 30, "transcription")
        os.kill(pid, signal.SIGKILL)
        killed_at = time.monotonic()
        response = pending.result(timeout=60)
        assert time.monotonic() - killed_at < 15
    assert response.status_code == 503  # README: a dead replica is a 503 envelope
    assert "Traceback" not in response.text
    short = {"file": ("a.wav", (ROOT / "tests/fixtures/speech_en.wav").read_bytes())}

    def transcribed() -> bool:
        r = http.post("/v1/audio/transcriptions", files=short, data={"model": "whisper-base"})
        return r.status_code == 200 and "fox" in r.json()["text"].lower()

    wait_until(transcribed, 120, "a replacement Whisper replica")


def test_the_ingress_reads_running_replicas_from_the_controller(base_url: str):
    """What a call waiting for a replica checks (serve_app/dispatch.py): the real controller's
    counts, keyed as the ingress's handles name their deployments."""
    whisper = model_handle("whisper-whisper-base")
    counts = _running_replicas()
    assert counts[whisper.app_name, whisper.deployment_name] >= 1
    assert counts["openai", "audio-preprocessor"] >= 1
    assert counts[LLM_DEPLOYMENT, LLM_DEPLOYMENT] == len(replica_pids(LLM_DEPLOYMENT))
