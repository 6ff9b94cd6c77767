"""Crash recovery and graceful redeploys, proven on the running app (real processes)."""

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
import yaml
from ray import serve

from bench.speech_bench import minute_clip
from tests.serve.conftest import ROOT, session_args
from tests.waiting import wait_until

pytestmark = pytest.mark.serve

MODEL = "smollm2-135m-instruct"
LLM_DEPLOYMENT = f"llm-{MODEL}"


def replica_pids(deployment: str) -> list[int]:
    """PIDs of the live replica processes (Ray titles them ``ray::ServeReplica:app:name``)."""
    title = f"ray::ServeReplica:openai:{deployment}"
    return [p.pid for p in psutil.process_iter(["cmdline"]) if _title(p).split()[:1] == [title]]


def engine_cores() -> list[psutil.Process]:
    """vLLM's engine-core processes (one per live LLM replica)."""
    return [p for p in psutil.process_iter(["cmdline"]) if "EngineCore" in _title(p)]


def _title(process: psutil.Process) -> str:
    return " ".join(process.info["cmdline"] or [])


def chat_ok(http: httpx.Client) -> bool:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3}
    return http.post("/v1/chat/completions", json=body, timeout=30).status_code == 200


def stream_events(
    http: httpx.Client, max_tokens: int, started: threading.Event | None = None
) -> tuple[int, list[str], float]:
    """Status, SSE payloads and end time of one stream; ``started`` is set at its first event."""
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Tell me a long story."}],
        "max_tokens": max_tokens,
        "ignore_eos": True,  # vLLM's: always generate max_tokens
        "temperature": 0,
        "stream": True,
    }
    events = []
    with http.stream("POST", "/v1/chat/completions", json=body, timeout=120) as response:
        for line in response.iter_lines():
            if line.startswith("data: "):
                events.append(line.removeprefix("data: "))
                if started is not None:
                    started.set()
    return response.status_code, events, time.monotonic()


def test_llm_replica_killed_under_load_recovers(http: httpx.Client):
    (pid,) = replica_pids(LLM_DEPLOYMENT)
    llm = serve.get_deployment_handle(LLM_DEPLOYMENT, app_name="openai")
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        started = [threading.Event() for _ in range(3)]
        streams = [pool.submit(stream_events, http, 600, event) for event in started]
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
        for future in streams:
            status, events, ended = future.result(timeout=60)
            assert ended - killed_at < 15, "stream hung after the replica died"
            assert status == 200 and events[-1] == "[DONE]"
            error = json.loads(events[-2])
            assert error["error"]["type"] == "server_error"
            assert "Traceback" not in events[-2] and "pid" not in events[-2]
        response = unary.result(timeout=60)
        assert response.status_code == 503  # README: a dead replica is a 503 envelope
        assert set(response.json()["error"]) == {"message", "type", "param", "code"}
    wait_until(lambda: chat_ok(http), 240, "a replacement replica")
    (new_pid,) = replica_pids(LLM_DEPLOYMENT)
    assert new_pid != pid
    # The dead replica's engine core went with it: one engine core per live replica.
    try:
        wait_until(lambda: len(engine_cores()) == 1, 30, "the orphaned engine core to exit")
    except AssertionError as exc:  # say which processes were left (pid, parent, state)
        left = []
        for process in engine_cores():
            with contextlib.suppress(psutil.Error):
                left.append((process.pid, process.ppid(), process.status()))
        raise AssertionError(f"{exc}; engine cores: {left}") from None


def test_whisper_replica_killed_mid_request_recovers(http: httpx.Client):
    (pid,) = replica_pids("whisper-whisper-base")
    whisper = serve.get_deployment_handle("whisper-whisper-base", app_name="openai")
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


def test_the_ingress_reads_running_replicas_from_the_controller():
    """What a call waiting for a replica checks (serve_app/dispatch.py): the real controller's
    counts, keyed as the ingress's handles name their deployments."""
    from serve_app.dispatch import _running_replicas

    whisper = serve.get_deployment_handle("whisper-whisper-base", app_name="openai")
    counts = _running_replicas()
    assert counts[whisper.app_name, whisper.deployment_name] >= 1
    assert counts["openai", "audio-preprocessor"] >= 1
    assert counts["openai", LLM_DEPLOYMENT] == len(replica_pids(LLM_DEPLOYMENT))


def test_redeploy_lets_in_flight_streams_finish(http: httpx.Client, base_url: str):
    from serve_app.app import build_app
    from serve_app.config import AppConfig

    (old_pid,) = replica_pids(LLM_DEPLOYMENT)
    config = yaml.safe_load((ROOT / "examples/loopback-gateway.yaml").read_text())
    args = session_args(config["applications"][0]["args"], int(base_url.rsplit(":", 1)[1]))
    llm = next(m for m in args["models"] if m["family"] == "llm")
    llm["deployment"]["num_cpus"] = 0.9  # a change that replaces the replicas
    handle = serve.get_deployment_handle(LLM_DEPLOYMENT, app_name="openai")
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        in_flight = [pool.submit(stream_events, http, 120) for _ in range(2)]
        wait_until(lambda: handle.num_unfinished_requests.remote().result() >= 2, 30, "streams")
        serve.run(build_app(AppConfig.model_validate(args)), name="openai", route_prefix="/",
                  blocking=False)  # fmt: skip
        for future in in_flight:
            status, events, _ = future.result(timeout=120)
            assert status == 200 and events[-1] == "[DONE]"
            last = json.loads(events[-2])
            assert "error" not in last
            assert last["choices"][0]["finish_reason"] == "length"
    wait_until(lambda: replica_pids(LLM_DEPLOYMENT) not in ([], [old_pid]), 240, "new replica")
    wait_until(lambda: chat_ok(http), 240, "the redeployed app")
