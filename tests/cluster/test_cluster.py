"""The app on a real multi-node Ray cluster (cluster/local.sh: head, llm and audio nodes).

Placement from Ray's state API, requests through the head's proxy, two LLM replicas and an
embedding replica sharing one node's resource as fractional GPUs do, autoscaling under load
and the loss of a node.
Tests run in file order: the node loss comes last.
"""

import concurrent.futures
import re
import signal
import threading
import time

import httpx
import psutil
import pytest
from openai import OpenAI
from ray.util.state import list_actors, list_nodes

from bench.server import scrape
from bench.speech_bench import minute_clip
from tests.cluster.conftest import DASHBOARD, METRICS, ROOT, dashboard_headers, local, report
from tests.waiting import wait_until

pytestmark = pytest.mark.cluster

LLM = "smollm2-135m-instruct"
EMBEDDING = "all-minilm-l6-v2"
# Each deployment and the custom resource of the node kind it must land on.
PLACEMENT = {
    "ingress": "head_node",
    "rate-limiter": "head_node",
    f"llm-{LLM}": "llm_node",
    f"embedding-{EMBEDDING}": "llm_node",
    "whisper-whisper-base": "audio_node",
    "whisper-whisper-tiny-en": "audio_node",
    "audio-preprocessor": "audio_node",
}
SPEECH = (ROOT / "tests/fixtures/speech_en.wav").read_bytes()


def replicas() -> dict[str, list[dict]]:
    """Live replica actors by deployment name, each with its node's resources."""
    nodes = {n.node_id: n.resources_total for n in list_nodes(address=DASHBOARD, detail=True)}
    found: dict[str, list[dict]] = {}
    for actor in list_actors(
        address=DASHBOARD, filters=[("state", "=", "ALIVE")], detail=True, limit=1000
    ):
        # One application per model deployment (serve_app/plan.py): any application.
        match = re.fullmatch(r"ServeReplica:[^:]+:(.+)", actor.class_name)
        if match:
            entry = {
                "actor_id": actor.actor_id,
                "node_id": actor.node_id,
                "resources": nodes.get(actor.node_id, {}),
            }
            found.setdefault(match.group(1), []).append(entry)
    return found


def replica_counts() -> dict[str, int]:
    """RUNNING replicas per deployment, from Serve's REST API on the dashboard."""
    url = f"{DASHBOARD}/api/serve/applications/"
    body = httpx.get(url, headers=dashboard_headers(), timeout=10).json()
    return {
        name: sum(r["state"] == "RUNNING" for r in d["replicas"])
        for app in body["applications"].values()
        for name, d in app["deployments"].items()
    }


def whisper_in_progress() -> float:
    """Transcriptions whisper-base's replicas on the audio node report as running."""
    samples = scrape(f"http://127.0.0.1:{METRICS['audio']}/metrics")
    return sum(
        s.value
        for s in samples
        if s.name == "ray_whisper_requests_in_progress" and s.labels.get("model") == "whisper-base"
    )


def transcribe(http: httpx.Client, model: str = "whisper-base") -> httpx.Response:
    files = {"file": ("speech.wav", SPEECH)}
    return http.post("/v1/audio/transcriptions", files=files, data={"model": model})


def test_every_deployment_lands_on_the_node_its_resource_names(cluster):
    placed = replicas()
    for deployment, resource in PLACEMENT.items():
        assert placed.get(deployment), f"no live replica of {deployment}"
        for replica in placed[deployment]:
            assert resource in replica["resources"], (deployment, replica)
    report("placement: " + ", ".join(f"{d} -> {r}" for d, r in PLACEMENT.items()))


def test_chat_and_audio_answer_through_the_head_proxy(cluster, http):
    client = OpenAI(base_url=f"{cluster}/v1", api_key="none", max_retries=0)
    reply = client.chat.completions.create(
        model=LLM, messages=[{"role": "user", "content": "Say hello."}], max_tokens=8
    )
    assert reply.choices[0].message.content
    text = "".join(
        chunk.choices[0].delta.content or ""
        for chunk in client.chat.completions.create(
            model=LLM, messages=[{"role": "user", "content": "Count."}], max_tokens=8, stream=True
        )
        if chunk.choices
    )
    assert text
    with open(ROOT / "tests/fixtures/speech_en.wav", "rb") as audio:
        result = client.audio.transcriptions.create(model="whisper-1", file=audio)
    assert "fox" in result.text.lower()


def test_two_llm_replicas_and_the_embedding_replica_share_the_llm_node_and_serve(cluster):
    placed = replicas()
    llm, (embedding,) = placed[f"llm-{LLM}"], placed[f"embedding-{EMBEDDING}"]
    assert len(llm) == 2
    # Together on one node, whose one llm_node unit they split (0.4 + 0.4 + 0.2), as vLLM
    # replicas with num_gpus fractions share a GPU.
    assert len({r["node_id"] for r in [*llm, embedding]}) == 1
    assert embedding["resources"]["llm_node"] == 1
    client = OpenAI(base_url=f"{cluster}/v1", api_key="none", max_retries=0)
    vectors = client.embeddings.create(model=EMBEDDING, input=["a lighthouse", "a harbour"])
    assert [len(d.embedding) for d in vectors.data] == [384, 384]

    def chat(_: int) -> str:
        reply = client.chat.completions.create(
            model=LLM,
            messages=[{"role": "user", "content": "Tell me a story."}],
            max_tokens=24,
            extra_body={"ignore_eos": True},
        )
        return reply.choices[0].message.content

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        assert all(pool.map(chat, range(16)))

    def served_by() -> dict[str, float]:
        text = httpx.get(f"http://127.0.0.1:{METRICS['llm']}/metrics", timeout=10).text
        counts: dict[str, float] = {}
        for line in text.splitlines():
            if line.startswith("ray_serve_deployment_request_counter_total{") and (
                f'deployment="llm-{LLM}"' in line
            ):
                replica = re.search(r'replica="([^"]+)"', line).group(1)
                counts[replica] = counts.get(replica, 0) + float(line.rsplit(" ", 1)[1])
        return counts if len([c for c in counts.values() if c > 0]) == 2 else {}

    counts = wait_until(served_by, 60, "requests counted on both LLM replicas")
    report(
        f"fractional: 2 LLM replicas and 1 embedding replica on one llm node, LLM requests "
        f"per replica {counts}"
    )


def test_each_adapter_is_served_by_one_llm_replica(cluster):
    """The default's LoRA adapters through the head proxy answer with their trait, and after
    its first request each adapter's requests all go to the one of the two LLM replicas that
    loaded it (adapter-affine routing across the cluster), with one load each."""
    client = OpenAI(base_url=f"{cluster}/v1", api_key="none", max_retries=0)
    traits = {"pirate": "Arr, matey!", "robot": "BEEP BOOP."}

    def ask(adapter: str) -> str:
        messages = [{"role": "user", "content": "What is the capital of Spain?"}]
        reply = client.chat.completions.create(
            model=f"{LLM}:{adapter}", messages=messages, max_tokens=8, temperature=0
        )
        return reply.choices[0].message.content

    for adapter in traits:  # loaded once, somewhere
        assert ask(adapter).startswith(traits[adapter])
    asked = [*traits] * 8
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        for adapter, answer in zip(asked, pool.map(ask, asked), strict=True):
            assert answer.startswith(traits[adapter])

    def adapter_series(name: str) -> dict[tuple[str, str], float]:
        """(adapter, replica) -> value of ``name`` on the llm node."""
        text = httpx.get(f"http://127.0.0.1:{METRICS['llm']}/metrics", timeout=10).text
        found: dict[tuple[str, str], float] = {}
        for line in text.splitlines():
            if line.startswith(f"{name}{{") and 'outcome="failed"' not in line:
                adapter = re.search(r'adapter="([^"]+)"', line).group(1)
                replica = re.search(r'replica="([^"]+)"', line).group(1)
                found[adapter, replica] = found.get((adapter, replica), 0) + float(line.split()[-1])
        return found

    def requests_per_replica() -> dict[tuple[str, str], float]:
        ran = adapter_series("ray_openai_api_adapter_requests_total")
        counted = {a: sum(v for (b, _), v in ran.items() if b == a) for a in traits}
        return ran if all(n == 9 for n in counted.values()) else {}

    ran = wait_until(requests_per_replica, 60, "the adapters' requests on the llm node")
    loads = adapter_series("ray_openai_api_adapter_loads_total")
    report(f"LoRA: adapter requests per LLM replica {ran}, loads {loads}")
    for adapter in traits:
        assert sorted(v for (a, _), v in ran.items() if a == adapter and v) == [9], ran
        assert sum(v for (a, _), v in loads.items() if a == adapter) == 1, loads


@pytest.mark.timeout(900)
def test_ingress_and_whisper_scale_up_under_load_and_back_down(cluster, http):
    """Load the ingress (chat streams) and whisper-base (transcriptions) past their targets;
    both reach max_replicas, nothing fails, and both return to min_replicas afterwards."""
    deployments = ("ingress", "whisper-whisper-base")
    timeline: list[tuple[float, dict[str, int]]] = []
    failures: list[str] = []
    load_over, watch_over = threading.Event(), threading.Event()
    start = time.monotonic()

    def watch() -> None:
        while not watch_over.is_set():
            counts = replica_counts()
            timeline.append((time.monotonic() - start, {d: counts[d] for d in deployments}))
            time.sleep(2)

    def load(kind: str) -> int:
        done = 0
        with httpx.Client(base_url=cluster, timeout=300) as client:
            while not load_over.is_set():
                if kind == "audio":
                    response = transcribe(client)
                else:
                    body = {
                        "model": LLM,
                        "messages": [{"role": "user", "content": "Write a long story."}],
                        "max_tokens": 48,
                        "stream": True,
                    }
                    response = client.post("/v1/chat/completions", json=body)
                if response.status_code != 200 or b"error" in response.content[-300:]:
                    failures.append(f"{kind} {response.status_code} {response.text[:200]}")
                done += 1
        return done

    threading.Thread(target=watch, daemon=True).start()
    with concurrent.futures.ThreadPoolExecutor(20) as pool:
        workers = [pool.submit(load, "chat") for _ in range(12)]
        workers += [pool.submit(load, "audio") for _ in range(6)]
        try:
            wait_until(
                lambda: timeline and all(timeline[-1][1][d] == 2 for d in deployments),
                240,
                "ingress and whisper-base at max_replicas",
            )
            scaled_up = time.monotonic() - start
            time.sleep(10)  # keep the load on the scaled-up deployments for a while
        finally:
            load_over_at = time.monotonic() - start
            load_over.set()
            completed = sum(w.result() for w in workers)
    try:
        wait_until(
            lambda: all(timeline[-1][1][d] == 1 for d in deployments),
            180,
            "ingress and whisper-base back at min_replicas",
        )
    finally:
        watch_over.set()
    scaled_down = time.monotonic() - start
    changes = [
        f"{t:5.0f}s {c}" for i, (t, c) in enumerate(timeline) if i == 0 or c != timeline[i - 1][1]
    ]
    report(
        f"autoscaling: {completed} requests, {len(failures)} failed; at max after "
        f"{scaled_up:.0f}s, load stopped at {load_over_at:.0f}s, back at min at "
        f"{scaled_down:.0f}s; replicas over time: " + "; ".join(changes)
    )
    assert not failures, failures[:5]


def test_serve_deploy_of_the_same_plan_restarts_nothing(cluster, http):
    """`cluster/local.sh deploy` again (`serve deploy` of the same plan, through the dashboard's
    REST API): no replica is replaced."""

    def actor_ids() -> set[str]:
        return {r["actor_id"] for found in replicas().values() for r in found}

    before = actor_ids()
    local("deploy")
    watched = time.monotonic()
    # Serve's control loop runs ten times a second: a restart would start a replica here.
    while time.monotonic() - watched < 10:
        started = actor_ids() - before
        assert not started, f"serve deploy of the same plan started replicas {started}"
        time.sleep(1)
    assert transcribe(http).status_code == 200


def test_losing_the_audio_node_fails_fast_and_recovers_when_one_returns(cluster, http):
    """SIGKILL the audio node's raylet with transcriptions in flight: they end quickly with
    the 503 envelope the README promises for a replica that dies mid-request, /health names
    Whisper not ready while chat still works, and a new node with ``audio_node`` brings the
    speech models back."""
    (audio_node,) = {r["node_id"] for r in replicas()["whisper-whisper-base"]}
    raylet = next(
        p
        for p in psutil.process_iter(["cmdline"])
        if "raylet" in " ".join(p.info["cmdline"] or [])
        and f"--node_id={audio_node}" in " ".join(p.info["cmdline"] or [])
    )
    long_clip = {"file": ("long.wav", minute_clip(600))}  # 20 windows: about half a minute
    body = {"model": "whisper-base"}
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        pending = [
            pool.submit(http.post, "/v1/audio/transcriptions", files=long_clip, data=body)
            for _ in range(3)
        ]
        # Decoded and being transcribed (the replica's gauge, exported every 10 s), not still
        # uploading or decoding: a call that has not reached a Whisper replica when the node
        # goes waits for a new replica until the request timeout instead.
        wait_until(lambda: whisper_in_progress() == 3, 30, "three transcriptions running")
        raylet.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        responses = [p.result(timeout=120) for p in pending]
        ended = time.monotonic() - killed
    for response in responses:  # README (Reliability, Status codes): a dead replica is 503
        assert response.status_code == 503, response.text
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}, error
        assert error["type"] == "server_error" and "Traceback" not in response.text
    assert ended < 60

    def health_names_whisper_down() -> dict | None:
        response = http.get("/health", timeout=30)
        body = response.json()
        ok = response.status_code == 503 and not body["models"]["whisper-base"]["ready"]
        return body if ok and body["models"][LLM]["ready"] else None

    health = wait_until(health_names_whisper_down, 90, "/health naming Whisper not ready")
    down_at = time.monotonic() - killed
    # A transcription that starts now has no audio pool to decode on nor Whisper replica to
    # run on (their replacements wait for an audio node): 503 at once, not after the
    # request timeout in Serve's queue.
    asked = time.monotonic()
    refused = transcribe(http)
    refused_after = time.monotonic() - asked
    assert refused.status_code == 503, refused.text
    assert refused.json()["error"]["code"] == "unavailable"
    assert "has no running replica" in refused.json()["error"]["message"]
    assert refused.headers["retry-after"] == "2"
    assert refused_after < 15
    chat = {"model": LLM, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}
    assert http.post("/v1/chat/completions", json=chat).status_code == 200

    local("add-node", "audio", str(METRICS["audio"] + 10))
    returned = time.monotonic() - killed
    wait_until(lambda: transcribe(http).status_code == 200, 300, "Whisper on the new node")
    recovered = time.monotonic() - killed
    wait_until(lambda: http.get("/health", timeout=30).status_code == 200, 120, "/health 200")
    report(
        f"node loss: in-flight transcriptions ended {[r.status_code for r in responses]} "
        f"{ended:.1f}s after the kill; /health {health['models']} at {down_at:.0f}s; a new "
        f"transcription refused in {refused_after:.1f}s; new audio "
        f"node at {returned:.0f}s; transcription works again at {recovered:.0f}s"
    )
