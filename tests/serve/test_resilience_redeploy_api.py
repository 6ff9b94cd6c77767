"""Graceful redeploys and scale-downs, proven on the running app: the same plan restarts
nothing, a scale-down lets the stopping replica finish what it holds, and a changed model
restarts only its own deployment."""

import concurrent.futures
import json
import threading
import time
import uuid

import httpx
import pytest

from tests.serve.conftest import ROOT, model_handle, rescaled
from tests.serve.replicas import (
    LLM_DEPLOYMENT,
    chat_ok,
    new_replicas,
    redeployed,
    replica_logs,
    replica_pids,
    running,
    serve_replicas,
    stream_events,
)
from tests.waiting import wait_until

pytestmark = pytest.mark.serve


def test_redeploying_the_same_config_restarts_nothing(http: httpx.Client, base_url: str):
    before = serve_replicas()
    applied = redeployed(int(base_url.rsplit(":", 1)[1]))
    # Serve's control loop runs ten times a second: a restart it decided on would start a
    # replica within this watch.
    while time.monotonic() - applied < 10:
        started = {name: pids for name, pids in new_replicas(before).items() if pids}
        assert not started, f"the same config restarted {started}"
        time.sleep(0.5)
    assert chat_ok(http)


def test_a_scale_down_lets_the_stopping_replica_finish_its_requests(
    http: httpx.Client, base_url: str
):
    """Two whisper-tiny.en replicas with transcriptions on both; the config's `deployments`
    section then scales the deployment to one (as the autoscaler does when load falls, but
    at a moment we choose): the stopping replica finishes what it holds, with the default
    `graceful_shutdown_timeout_s` (20 s), and nothing is restarted (the session's config has
    this override from the start: only its values change). The stopping replica's own log
    shows it: our requests (by their `x-request-id`) end OK after its drain began."""
    from tests.audio_files import wav_bytes
    from tests.speech_corpus import RATE, render, require_espeak

    require_espeak("the recording")
    port = int(base_url.rsplit(":", 1)[1])
    deployment = "whisper-whisper-tiny-en"

    clip = wav_bytes(render("lighthouse").samples[: 40 * RATE], RATE)  # 40 s, two windows
    whisper = model_handle(deployment)

    def transcribe(request_id: str) -> tuple[int, float]:
        files = {"file": ("clip.wav", clip)}
        response = http.post(
            "/v1/audio/transcriptions",
            files=files,
            data={"model": "whisper-tiny.en"},
            headers={"x-request-id": request_id},
        )
        return response.status_code, time.monotonic()

    def scale_down_under_load() -> list[str]:
        """Scale to two, transcribe four clips, scale to one while they run; the ids of
        those the stopping replica answered OK after its drain began."""
        first = set(replica_pids(deployment))
        redeployed(port, rescaled({deployment: 2}))
        # Running, not just started: a replica still loading its model is sent nothing.
        wait_until(lambda: running(deployment) == 2, 120, "two running whisper-tiny.en replicas")
        two = set(replica_pids(deployment))
        assert first <= two  # scaled up, not restarted
        request_ids = [f"scale-down-{uuid.uuid4().hex[:12]}" for _ in range(4)]
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            # Serve's router sends each to the less busy of the two: two each, usually.
            pending = [pool.submit(transcribe, request_id) for request_id in request_ids]
            wait_until(lambda: whisper.stats.remote().result()["active"], 30, "transcriptions")
            applied = redeployed(port, rescaled({deployment: 1}))
            results = [p.result(timeout=120) for p in pending]
        assert [status for status, _ in results] == [200] * 4
        assert any(ended > applied for _, ended in results), "all ended before the scale-down"
        wait_until(lambda: len(replica_pids(deployment)) == 1, 60, "one replica left")
        assert set(replica_pids(deployment)) < two  # one of the two stayed: no restart
        # From the stopping replica's own log (the one that drained now): the requests it
        # held when its drain began and answered OK after.
        after_drain = []
        for lines in replica_logs(deployment).values():
            drains = [i for i, line in enumerate(lines) if "Draining: staying reachable" in line]
            drained = lines[drains[-1] :] if drains else []
            after_drain += [
                request_id
                for line in drained
                for request_id in request_ids
                if request_id in line and "CALL /v1/audio/transcriptions OK" in line
            ]
        return after_drain

    # Serve chooses which replica stops, and a router that has not heard of the new replica
    # yet sends it nothing: a round whose stopping replica held none of the clips proves
    # nothing either way, and is tried again.
    for _ in range(3):
        after_drain = scale_down_under_load()
        if after_drain:
            break
    assert after_drain, "the stopping replica held none of our requests when it began to drain"
    redeployed(port)  # the session's own config again: min 1, max 2, one replica kept


def test_changing_one_model_restarts_only_its_deployment(http: httpx.Client, base_url: str):
    """The LLM's options change: its replica is replaced (streams on it drain), while the
    ingress takes the new model list in place and transcriptions on Whisper, like every other
    deployment, carry on untouched all along."""

    def more_cpus_for_the_llm(config: dict) -> None:
        (app,) = config["applications"]
        llm = next(m for m in app["args"]["models"] if m["family"] == "llm")
        llm["deployment"]["num_cpus"] = 0.9  # a change that replaces its replicas

    before = serve_replicas()
    (old_pid,) = before[LLM_DEPLOYMENT]
    handle = model_handle(LLM_DEPLOYMENT)
    short = {"file": ("a.wav", (ROOT / "tests/fixtures/speech_en.wav").read_bytes())}
    replaced = threading.Event()
    statuses: list[int] = []

    def transcribe_until_replaced() -> None:
        while not replaced.is_set():
            response = http.post(
                "/v1/audio/transcriptions", files=short, data={"model": "whisper-base"}
            )
            statuses.append(response.status_code)

    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        in_flight = [pool.submit(stream_events, http, 120) for _ in range(2)]
        speech = pool.submit(transcribe_until_replaced)
        wait_until(lambda: handle.num_unfinished_requests.remote().result() >= 2, 30, "streams")
        wait_until(lambda: statuses, 60, "a first transcription")
        redeployed(int(base_url.rsplit(":", 1)[1]), more_cpus_for_the_llm)
        try:
            for future in in_flight:
                status, events, _ = future.result(timeout=120)
                assert status == 200 and events[-1] == "[DONE]"
                last = json.loads(events[-2])
                assert "error" not in last
                assert last["choices"][0]["finish_reason"] == "length"
            wait_until(
                lambda: replica_pids(LLM_DEPLOYMENT) not in ([], [old_pid]), 240, "new replica"
            )
        finally:
            replaced.set()
        speech.result(timeout=120)
    assert len(statuses) >= 3 and set(statuses) == {200}, statuses
    wait_until(lambda: chat_ok(http), 240, "the redeployed LLM")
    started = {name: pids for name, pids in new_replicas(before).items() if pids}
    assert set(started) == {LLM_DEPLOYMENT}, started
