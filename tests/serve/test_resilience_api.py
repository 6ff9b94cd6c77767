"""Crash recovery and graceful redeploys, proven on the running app (real processes)."""

import concurrent.futures
import contextlib
import json
import os
import re
import signal
import threading
import time
import uuid

import httpx
import psutil
import pytest
from ray import serve

from bench.speech_bench import minute_clip
from serve_app.dispatch import _running_replicas
from tests.serve.conftest import (
    RAY_TEMP_DIR,
    RESCALABLE,
    ROOT,
    deploy,
    model_handle,
    rescaled,
    session_config,
)
from tests.waiting import wait_until

pytestmark = pytest.mark.serve

MODEL = "smollm2-135m-instruct"
LLM_DEPLOYMENT = f"llm-{MODEL}"
VLLM_DEPLOYMENTS = ("llm-", "embedding-")


def replica_pids(deployment: str) -> list[int]:
    """PIDs of the live replica processes of ``deployment``."""
    return sorted(serve_replicas().get(deployment, ()))


def serve_replicas() -> dict[str, set[int]]:
    """Deployment name -> PIDs of its live replica processes (Ray titles them
    ``ray::ServeReplica:<application>:<deployment>``, plus ``.<method>`` while one runs)."""
    found: dict[str, set[int]] = {}
    for process in psutil.process_iter(["cmdline"]):
        title = _title(process).split()[:1]
        if title and title[0].startswith("ray::ServeReplica:"):
            deployment = re.sub(r"\.[a-z_]+$", "", title[0].rsplit(":", 1)[1])
            found.setdefault(deployment, set()).add(process.pid)
    return found


def engine_cores() -> list[psutil.Process]:
    """vLLM's engine-core processes (one per live vLLM replica: the LLM's and the embedding
    model's)."""
    return [p for p in psutil.process_iter(["cmdline"]) if "EngineCore" in _title(p)]


def vllm_replicas() -> int:
    """Live replicas that run a vLLM engine."""
    replicas = serve_replicas()
    return sum(len(pids) for name, pids in replicas.items() if name.startswith(VLLM_DEPLOYMENTS))


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
    llm = model_handle(LLM_DEPLOYMENT)
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
    # The dead replica's engine core went with it: one engine core per live vLLM replica.
    try:
        wait_until(
            lambda: len(engine_cores()) == vllm_replicas() == 2,
            30,
            "the orphaned engine core to exit",
        )
    except AssertionError as exc:  # say which processes were left (pid, parent, state)
        left = []
        for process in engine_cores():
            with contextlib.suppress(psutil.Error):
                left.append((process.pid, process.ppid(), process.status()))
        raise AssertionError(f"{exc}; engine cores: {left}") from None


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


def new_replicas(before: dict[str, set[int]]) -> dict[str, set[int]]:
    """Replica processes started since ``before``, by deployment (a scale-down only ends some,
    and is not a restart)."""
    now = serve_replicas()
    return {name: pids - before.get(name, set()) for name, pids in now.items()}


def redeployed(port: int, change=lambda config: None) -> float:
    """Deploy the session's config again, ``change``d, as `serve deploy` does; wait until
    Serve's controller has applied it. Returns when it was applied (monotonic)."""
    before = serve.status().applications["openai"].last_deployed_time_s
    config = session_config(port)
    change(config)
    deploy(config)
    wait_until(
        lambda: serve.status().applications["openai"].last_deployed_time_s > before,
        60,
        "the controller to apply the redeploy",
    )
    return time.monotonic()


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


def running(deployment: str) -> int:
    """RUNNING replicas of ``deployment`` as Serve's controller counts them."""
    app = "openai" if deployment in ("ingress", "audio-preprocessor") else deployment
    return _running_replicas().get((app, deployment), 0)


def replica_logs(deployment: str) -> dict[str, list[str]]:
    """Serve's log of each replica ``deployment`` has had this session (model deployments run
    in the application named after them), by file name."""
    logs = RAY_TEMP_DIR / "session_latest" / "logs" / "serve"
    return {
        path.name: path.read_text().splitlines()
        for path in logs.glob(f"replica_{deployment}_{deployment}_*.log")
    }


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

    first = set(replica_pids(deployment))
    redeployed(port, rescaled({deployment: 2}))
    # Running, not just started: a replica still loading its model is sent nothing.
    wait_until(lambda: running(deployment) == 2, 120, "two running whisper-tiny.en replicas")
    two = set(replica_pids(deployment))
    assert first <= two  # scaled up, not restarted
    clip = wav_bytes(render("lighthouse").samples[: 40 * RATE], RATE)  # 40 s, two windows
    whisper = model_handle(deployment)
    request_ids = [f"scale-down-{uuid.uuid4().hex[:12]}" for _ in range(4)]

    def transcribe(request_id: str) -> tuple[int, float]:
        files = {"file": ("clip.wav", clip)}
        response = http.post(
            "/v1/audio/transcriptions",
            files=files,
            data={"model": "whisper-tiny.en"},
            headers={"x-request-id": request_id},
        )
        return response.status_code, time.monotonic()

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        # Serve's router sends each to the less busy of the two: two each.
        pending = [pool.submit(transcribe, request_id) for request_id in request_ids]
        wait_until(lambda: whisper.stats.remote().result()["active"], 30, "transcriptions")
        applied = redeployed(port, rescaled({deployment: 1}))
        results = [p.result(timeout=120) for p in pending]
    assert [status for status, _ in results] == [200] * 4
    assert any(ended > applied for _, ended in results), "all ended before the scale-down"
    wait_until(lambda: len(replica_pids(deployment)) == 1, 60, "one replica left")
    assert set(replica_pids(deployment)) < two  # one of the two stayed: no restart

    # From the stopping replica's own log (the one that drained during this test): it held
    # some of our requests when its drain began, and answered them OK after.
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


# Issue 35's soak: speech scaled to its max, then a kill -9. Serve does not preempt: the killed
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
