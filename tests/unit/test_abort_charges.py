"""A model replica charges work cut short (``deployments/common/usage.py``): what the engine
counted, once, only when the frame with the usage never went out."""

import asyncio

import pytest

from deployments.common import usage as usage_module
from deployments.common.contracts import ChunkFrame, UsageFrame
from deployments.common.usage import Account, metered

ACCOUNT = Account(key="k", kind="completions", route="/v1/chat/completions", limiter=("l", "a"))
COUNTS = {"prompt_tokens": 7.0, "completion_tokens": 3.0}


@pytest.fixture
def charged(monkeypatch):
    """The charges the replica sends to the rate limiter."""
    sent = []

    class Limiter:
        class charge:  # noqa: N801 - a handle's method
            @staticmethod
            async def remote(charges):
                sent.extend(charges)

    monkeypatch.setattr(usage_module.serve, "get_deployment_handle", lambda *_: Limiter)
    return sent


async def frames(items, then=None):
    for item in items:
        yield item
        await asyncio.sleep(0)
    if then is not None:
        await asyncio.sleep(then)


async def consume(stream):
    async for _ in stream:
        pass
    await asyncio.sleep(0.01)  # the charge is sent from a task of its own


def test_a_finished_call_is_charged_by_the_ingress_not_here(charged):
    stream = metered(frames([ChunkFrame("{}"), UsageFrame(COUNTS)]), ACCOUNT, "m", lambda: COUNTS)
    asyncio.run(consume(stream))
    assert charged == []


async def cancelled(used):
    stream = metered(frames([ChunkFrame("{}")], then=60), ACCOUNT, "m", used)
    task = asyncio.ensure_future(consume(stream))
    await asyncio.sleep(0.05)
    task.cancel()
    await asyncio.sleep(0.05)


def test_a_call_cancelled_mid_stream_charges_what_the_engine_counted(charged):
    asyncio.run(cancelled(lambda: COUNTS))
    (charge,) = charged
    assert (charge.key, charge.model, charge.ended) == ("k", "m", "cancelled")
    assert (charge.input_tokens, charge.output_tokens) == (7, 3)


def test_a_failing_engine_charges_as_failed_and_nothing_done_charges_nothing(charged):
    async def broken():
        yield ChunkFrame("{}")
        raise RuntimeError("engine died")

    with pytest.raises(RuntimeError):
        asyncio.run(consume(metered(broken(), ACCOUNT, "m", lambda: COUNTS)))
    assert [c.ended for c in charged] == ["failed"]
    asyncio.run(cancelled(dict))  # cancelled before the engine did anything
    assert len(charged) == 1
