"""The Whisper replica's continuous batcher: windows that arrive while the model is busy are
decoded together in its next call; cancelled windows are dropped; errors reach every caller;
each request's windows are counted, and those decoded in a call with another request's."""

import asyncio
import threading

import pytest

from deployments.whisper.deployment import Batcher


class Model:
    """Stands in for ``WhisperEngine.decode_windows``: records each call's batch and blocks
    until released, like a model call that takes a while."""

    def __init__(self, fail: bool = False) -> None:
        self.calls: list[list[str]] = []
        self.release = threading.Event()
        self.fail = fail

    def __call__(self, windows: list[str]) -> list[str]:
        self.calls.append(list(windows))
        self.release.wait(5)
        if self.fail:
            raise RuntimeError("model broke")
        return [f"decoded {w}" for w in windows]


async def until(condition) -> None:
    for _ in range(500):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("timed out")


def test_windows_arriving_while_the_model_is_busy_share_its_next_call():
    async def scenario():
        model = Model()
        batcher = Batcher(model, max_batch_size=4, wait_s=0)
        first = asyncio.create_task(batcher.submit("a"))
        await until(lambda: model.calls)  # the model is busy with "a" alone
        rest = [asyncio.create_task(batcher.submit(w)) for w in "bcdef"]
        await asyncio.sleep(0.05)
        model.release.set()
        results = await asyncio.gather(first, *rest)
        return model.calls, results

    calls, results = asyncio.run(scenario())
    assert calls == [["a"], ["b", "c", "d", "e"], ["f"]]  # at most max_batch_size per call
    assert results == [f"decoded {w}" for w in "abcdef"]


def test_a_cancelled_window_is_dropped_before_the_model_sees_it():
    async def scenario():
        model = Model()
        batcher = Batcher(model, max_batch_size=8, wait_s=0)
        first = asyncio.create_task(batcher.submit("a"))
        await until(lambda: model.calls)
        gone = asyncio.create_task(batcher.submit("gone"))
        kept = asyncio.create_task(batcher.submit("kept"))
        await asyncio.sleep(0.01)
        gone.cancel()
        model.release.set()
        return model.calls, await first, await kept

    calls, first, kept = asyncio.run(scenario())
    assert calls == [["a"], ["kept"]]
    assert (first, kept) == ("decoded a", "decoded kept")


def test_a_window_is_reported_started_when_its_model_call_starts_cancelled_or_not():
    """What a request cut short is charged: the windows whose decode had started."""

    async def scenario():
        model, started = Model(), []
        batcher = Batcher(model, max_batch_size=8, wait_s=0)
        running = asyncio.create_task(batcher.submit("a", "r", started.append))
        await until(lambda: model.calls)
        queued = asyncio.create_task(batcher.submit("b", "r", started.append))
        await asyncio.sleep(0.01)
        running.cancel()  # the request went away: "a" is decoded all the same
        queued.cancel()  # dropped before its call: not started
        model.release.set()
        await asyncio.sleep(0.05)
        return started

    assert asyncio.run(scenario()) == ["a"]


def test_a_model_error_reaches_every_window_of_the_batch_and_the_batcher_goes_on():
    async def scenario():
        model = Model(fail=True)
        model.release.set()
        batcher = Batcher(model, max_batch_size=8, wait_s=0)
        outcomes = await asyncio.gather(
            batcher.submit("a"), batcher.submit("b"), return_exceptions=True
        )
        model.fail = False
        return outcomes, await batcher.submit("c")

    outcomes, after = asyncio.run(scenario())
    assert all(isinstance(o, RuntimeError) for o in outcomes)
    assert after == "decoded c"


def test_an_idle_model_waits_for_a_burst_to_fill_its_first_call():
    async def scenario():
        model = Model()
        model.release.set()
        batcher = Batcher(model, max_batch_size=8, wait_s=0.2)
        first = asyncio.create_task(batcher.submit("a"))
        await asyncio.sleep(0.05)
        second = asyncio.create_task(batcher.submit("b"))
        await asyncio.gather(first, second)
        return model.calls

    assert asyncio.run(scenario()) == [["a", "b"]]


@pytest.mark.parametrize("size", [1, 3])
def test_batch_sizes_are_reported(size):
    seen = []

    async def scenario():
        model = Model()
        model.release.set()
        batcher = Batcher(model, max_batch_size=size, wait_s=0.05, on_batch=seen.append)
        await asyncio.gather(*(batcher.submit(w) for w in "abc"))

    asyncio.run(scenario())
    expected = ["abc"] if size == 3 else ["a", "b", "c"]
    assert sorted("".join(batch) for batch in seen) == expected


def test_each_request_counts_its_windows_and_those_decoded_with_another_requests():
    """``requests``: per request id, windows handed to the model and, of them, those in a
    call that also held a window of another request (a request alone counts none)."""

    async def scenario():
        model = Model()
        batcher = Batcher(model, max_batch_size=8, wait_s=0)
        first = asyncio.create_task(batcher.submit("a1", "a"))
        await until(lambda: model.calls)  # "a" alone
        rest = [
            asyncio.create_task(batcher.submit(window, request))
            for window, request in (("a2", "a"), ("b1", "b"), ("b2", "b"), ("x", None))
        ]
        await until(lambda: len(batcher.queue) == 4)
        model.release.set()
        await asyncio.gather(first, *rest)
        await batcher.submit("c1", "c")  # alone again
        await asyncio.gather(batcher.submit("d1", "d"), batcher.submit("d2", "d"))
        return model.calls, batcher.requests

    calls, requests = asyncio.run(scenario())
    assert calls == [["a1"], ["a2", "b1", "b2", "x"], ["c1"], ["d1", "d2"]]
    assert requests == {  # None: not counted, but it is another request's window
        "a": {"windows": 2, "shared": 1},
        "b": {"windows": 2, "shared": 2},
        "c": {"windows": 1, "shared": 0},
        "d": {"windows": 2, "shared": 0},  # its own two windows together: not shared
    }


def test_a_cancelled_window_neither_counts_nor_makes_a_call_shared():
    async def scenario():
        model = Model()
        batcher = Batcher(model, max_batch_size=8, wait_s=0)
        first = asyncio.create_task(batcher.submit("a1", "a"))
        await until(lambda: model.calls)
        gone = asyncio.create_task(batcher.submit("gone", "gone"))
        kept = asyncio.create_task(batcher.submit("b1", "b"))
        await until(lambda: len(batcher.queue) == 2)
        gone.cancel()
        model.release.set()
        await asyncio.gather(first, kept)
        return batcher.requests

    assert asyncio.run(scenario()) == {
        "a": {"windows": 1, "shared": 0},
        "b": {"windows": 1, "shared": 0},
    }


def test_only_the_most_recent_requests_are_remembered():
    async def scenario():
        model = Model()
        model.release.set()
        batcher = Batcher(model, max_batch_size=8, wait_s=0, remembered=2)
        for request in "abc":
            await batcher.submit(f"{request}1", request)
        await batcher.submit("a2", "a")  # "a" again: the most recent now
        await batcher.submit("d1", "d")
        return batcher.requests

    requests = asyncio.run(scenario())
    assert list(requests) == ["a", "d"]
    assert requests["a"] == {"windows": 1, "shared": 0}  # forgotten once, counted afresh
