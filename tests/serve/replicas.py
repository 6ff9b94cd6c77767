"""What the replica lifecycle tests share (test_resilience_*.py): the replica processes and
engine cores of the running app, Serve's view of its replicas and their logs, redeploying the
session's config, and the chat requests they watch recovery with."""

import re
import threading
import time

import httpx
import psutil
from ray import serve

from serve_app.dispatch import _running_replicas
from tests.serve.conftest import RAY_TEMP_DIR, deploy, model_handle, session_config
from tests.waiting import wait_until

MODEL = "smollm2-135m-instruct"
LLM_DEPLOYMENT = f"llm-{MODEL}"


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


def engine_cores(replica: int) -> list[psutil.Process]:
    """vLLM's engine-core processes started by the replica process ``replica``: the children it
    spawned with multiprocessing (the title vLLM gives them, VLLM::EngineCore, is best effort:
    once in CI a core kept its spawn command line)."""
    children = psutil.Process(replica).children(recursive=True)
    titles = {p: " ".join(p.cmdline()) for p in children}
    return [p for p, title in titles.items() if "EngineCore" in title or "spawn_main" in title]


def _title(process: psutil.Process) -> str:
    return " ".join(process.info["cmdline"] or [])


def chat_ok(http: httpx.Client) -> bool:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3}
    return http.post("/v1/chat/completions", json=body, timeout=30).status_code == 200


STORY = [{"role": "user", "content": "Tell me a long story."}]


def stream_events(
    http: httpx.Client,
    max_tokens: int,
    started: threading.Event | None = None,
    secret: str | None = None,
) -> tuple[int, list[str], float]:
    """Status, SSE payloads and end time of one stream (of the key ``secret``, if given);
    ``started`` is set at its first event."""
    body = {
        "model": MODEL,
        "messages": STORY,
        "max_tokens": max_tokens,
        "ignore_eos": True,  # vLLM's: always generate max_tokens
        "temperature": 0,
        "stream": True,
    }
    events = []
    headers = {"Authorization": f"Bearer {secret}"} if secret else None
    with http.stream(
        "POST", "/v1/chat/completions", json=body, headers=headers, timeout=120
    ) as response:
        for line in response.iter_lines():
            if line.startswith("data: "):
                events.append(line.removeprefix("data: "))
                if started is not None:
                    started.set()
    return response.status_code, events, time.monotonic()


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


def wait_engine_idle(deadline_s: float = 10) -> None:
    """Wait until the LLM's engine has no request left (an aborted one is let go)."""
    llm = model_handle(LLM_DEPLOYMENT)
    wait_until(
        lambda: llm.num_unfinished_requests.remote().result() == 0, deadline_s, "engine idle"
    )
