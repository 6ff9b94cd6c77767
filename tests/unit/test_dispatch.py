"""A call waiting for a replica of a deployment that has none running ends as a 503 at once,
instead of waiting out the request timeout in Serve's queue (serve_app/dispatch.py)."""

import asyncio
import concurrent.futures
import time

import pytest

from deployments.common.contracts import JSONFrame, Usage
from serve_app import dispatch
from serve_app.errors import APIError


class Handle:
    def __init__(self, name: str) -> None:
        self.app_name, self.deployment_name = "openai", name


class Pending:
    """A streaming call as Serve gives it: its replica future, then its frames."""

    def __init__(self, assigned: bool, answer_after_s: float | None = None) -> None:
        self._replica_result_future = concurrent.futures.Future()
        if assigned:
            self._replica_result_future.set_result(object())
        self.answer_after_s = answer_after_s
        self.cancelled = False

    async def __anext__(self):
        if self.answer_after_s is None:
            await asyncio.Event().wait()
        await asyncio.sleep(self.answer_after_s)
        return JSONFrame({"text": "ok"}, Usage())

    def cancel(self) -> None:
        self.cancelled = True


@pytest.fixture
def running(monkeypatch):
    """Replica counts the controller reports, and how often they were asked for."""
    counts = {("openai", "audio-preprocessor"): 1, ("openai", "whisper-whisper-base"): 1}
    fetches = []

    def fetch():
        fetches.append(time.monotonic())
        return dict(counts)

    monkeypatch.setattr(dispatch, "PROBE_S", 0.05)
    monkeypatch.setattr(dispatch, "REPLICAS", dispatch.Replicas(fetch, max_age_s=0.05))
    return counts, fetches


NEEDS = (Handle("audio-preprocessor"), Handle("whisper-whisper-base"))


def run(coro):
    return asyncio.run(coro)


def test_a_call_waiting_for_a_deployment_without_replicas_is_503_unavailable(running):
    counts, _ = running
    counts["openai", "audio-preprocessor"] = 0
    stream = Pending(assigned=False)
    started = time.monotonic()
    with pytest.raises(APIError) as raised:
        run(dispatch.open_call(lambda: stream, "req-1", 60, 2, NEEDS))
    assert time.monotonic() - started < 5
    error = raised.value
    assert (error.frame.status, error.frame.code) == (503, "unavailable")
    assert "audio-preprocessor has no running replica" in error.frame.message
    assert "req-1" in error.frame.message
    assert error.headers == {"Retry-After": "2"}
    assert stream.cancelled


def test_a_queued_call_keeps_waiting_while_its_deployments_have_replicas(running):
    _, fetches = running
    stream = Pending(assigned=False, answer_after_s=0.5)
    _, first = run(dispatch.open_call(lambda: stream, "req-2", 60, 2, NEEDS))
    assert first.body == {"text": "ok"}
    assert len(fetches) >= 2  # it did look, more than once
    assert not stream.cancelled


def test_a_call_a_replica_already_runs_is_left_to_finish(running):
    """A replica that is draining (a redeploy, a scale-down) finishes what it was given, even
    when no replica of its deployment is RUNNING any more."""
    counts, fetches = running
    counts["openai", "whisper-whisper-base"] = 0
    stream = Pending(assigned=True, answer_after_s=0.3)
    _, first = run(dispatch.open_call(lambda: stream, "req-3", 60, 2, NEEDS))
    assert first.body == {"text": "ok"}
    assert fetches == []


def test_waiting_calls_share_one_read_of_the_controller(running):
    counts, fetches = running
    counts["openai", "whisper-whisper-base"] = 0

    async def twenty():
        calls = [
            dispatch.open_call(lambda: Pending(assigned=False), f"r{i}", 60, 2, NEEDS)
            for i in range(20)
        ]
        return await asyncio.gather(*calls, return_exceptions=True)

    results = run(twenty())
    assert all(isinstance(r, APIError) and r.frame.status == 503 for r in results)
    assert len(fetches) <= 3


def test_an_unreadable_controller_means_keep_waiting_until_the_timeout(monkeypatch):
    def fetch():
        raise RuntimeError("controller unreachable")

    monkeypatch.setattr(dispatch, "PROBE_S", 0.05)
    monkeypatch.setattr(dispatch, "REPLICAS", dispatch.Replicas(fetch, max_age_s=0.05))
    with pytest.raises(APIError) as raised:
        run(dispatch.open_call(lambda: Pending(assigned=False), "req-4", 0.3, 2, NEEDS))
    assert (raised.value.frame.status, raised.value.frame.code) == (504, "timeout")
