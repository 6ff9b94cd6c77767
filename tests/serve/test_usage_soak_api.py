"""Every token counted under load while the ledger's own replicas die: streamed, unary and
abandoned chat requests of one key for 45 s, with a `kill -9` of the rate limiter and then of
the store. Afterwards the ledger holds exactly what vLLM's own counters counted (the clients'
usage plus what the abandoned requests generated), each answered request once, and a key whose
day's budget was spent before the kills is still refused."""

import concurrent.futures
import json
import os
import signal
import threading
import time

import httpx
import pytest

from tests.serve.replicas import MODEL, replica_pids
from tests.serve.test_usage_api import engine_counts, ledger, quiet_engine_counts
from tests.waiting import wait_until

pytestmark = pytest.mark.serve

SOAK_S = 45
KILLS = {10: "rate-limiter", 25: "response-store"}  # seconds into the load -> deployment
ASK = {"model": MODEL, "messages": [{"role": "user", "content": "Tell me a story."}]}


class Load:
    """One key's clients; what they were answered and the usage they saw."""

    def __init__(self, base_url: str) -> None:
        self.http = httpx.Client(
            base_url=base_url, headers={"Authorization": "Bearer soaker-secret"}, timeout=60
        )
        self.lock = threading.Lock()
        self.answered = 0  # 200s: each must be charged once
        self.refused: list[int] = []  # anything else (nothing reached an engine)
        self.seen = {"input": 0, "output": 0}  # usage the clients were told of
        self.broken: list[str] = []  # streams that ended without their usage (an error)

    def run(self, client: int, until: float) -> None:
        turn = client
        while time.monotonic() < until:
            [self.unary, self.streamed, self.abandoned][turn % 3]()
            turn += 1

    def count(self, status: int, usage: dict | None = None) -> None:
        with self.lock:
            if status != 200:
                self.refused.append(status)
                return
            self.answered += 1
            if usage:
                self.seen["input"] += usage["prompt_tokens"]
                self.seen["output"] += usage["completion_tokens"]

    def unary(self) -> None:
        response = self.http.post("/v1/chat/completions", json={**ASK, "max_tokens": 12})
        usage = response.json().get("usage") if response.status_code == 200 else None
        self.count(response.status_code, usage)

    def streamed(self) -> None:
        body = {**ASK, "max_tokens": 24, "stream": True, "stream_options": {"include_usage": True}}
        usage = error = None
        with self.http.stream("POST", "/v1/chat/completions", json=body) as response:
            for line in response.iter_lines():
                if line.startswith("data: {"):
                    event = json.loads(line.removeprefix("data: "))
                    usage, error = event.get("usage") or usage, event.get("error") or error
        if response.status_code == 200 and usage is None:
            self.broken.append(str(error))  # someone else's hang-up must not end this stream
        self.count(response.status_code, usage)

    def abandoned(self) -> None:
        """Read three events of a long answer and hang up: vLLM aborts it."""
        body = {**ASK, "max_tokens": 400, "ignore_eos": True, "stream": True}
        with self.http.stream("POST", "/v1/chat/completions", json=body) as response:
            if response.status_code == 200:
                events = (line for line in response.iter_lines() if line.startswith("data: "))
                for _ in range(3):
                    next(events)
        self.count(response.status_code)


def test_the_ledger_holds_every_token_across_kills_of_the_limiter_and_the_store(
    http: httpx.Client, base_url: str, metrics_url: str
):
    since = int(time.time()) - 60
    prompt_before, generated_before = quiet_engine_counts(metrics_url)
    spent = {"Authorization": "Bearer spender-secret"}
    ask = {**ASK, "max_tokens": 8}
    assert http.post("/v1/chat/completions", json=ask, headers=spent).is_success
    refused = http.post("/v1/chat/completions", json=ask, headers=spent)
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "insufficient_quota"

    load = Load(base_url)
    start = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        clients = [pool.submit(load.run, n, start + SOAK_S) for n in range(4)]
        for at, deployment in KILLS.items():
            time.sleep(max(0.0, start + at - time.monotonic()))
            (pid,) = replica_pids(deployment)
            os.kill(pid, signal.SIGKILL)
            restarted = lambda d=deployment, p=pid: replica_pids(d) not in ([], [p])  # noqa: E731
            wait_until(restarted, 60, f"a new {deployment} replica")
        for client in clients:
            client.result()
    load.http.close()
    assert load.answered > 30, (load.answered, load.refused)
    assert all(status in (429, 503) for status in load.refused), load.refused
    assert not load.broken, load.broken

    def charged() -> tuple[dict, dict]:
        return ledger(base_url, "soaker", since), ledger(base_url, "spender", since)

    def settled():
        soaker, spender = charged()
        prompt, generated = engine_counts(metrics_url)
        engine = {"input": prompt - prompt_before, "output": generated - generated_before}
        both = {name: soaker[name] + spender[name] for name in engine}
        return soaker if both == engine else None

    try:
        soaker = wait_until(settled, 90, "the ledger to match vLLM's counts")
    except AssertionError as exc:
        exc.args = (f"{exc}: ledger {charged()}, engine {engine_counts(metrics_url)}",)
        raise
    assert soaker["requests"] == load.answered  # each answered request charged once
    assert soaker["input"] >= load.seen["input"] and soaker["output"] > load.seen["output"]

    # The limiter that restarted read the day back from the ledger.
    still = http.post("/v1/chat/completions", json=ask, headers=spent)
    assert still.status_code == 429 and still.json()["error"]["code"] == "insufficient_quota"
