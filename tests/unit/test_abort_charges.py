"""Work cut short is charged (``deployments/common/usage.py``): by the model replica, what the
engine counted, once, only when the frame with the usage never went out; by the ingress, an
estimate, when the replica died mid-stream. A charge reaches the ledger through a limiter that
died, and a response whose charge the ledger did not take says so."""

import asyncio
import sqlite3

import pytest
from ray.exceptions import ActorDiedError

from deployments.common import usage as usage_module
from deployments.common.contracts import Charge, ChunkFrame, UsageFrame
from deployments.common.usage import Account, deliver, metered
from serve_app.channels import ChannelLost
from tests.unit.fakes import FakeHandle, local_limiter
from tests.unit.stores import run
from tests.unit.test_ingress import CHAT, make_client, sse_lines
from tests.unit.test_rate_limits import ledger_down
from tests.unit.test_security import OK, bearer, scoped

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


@pytest.mark.parametrize("death", [ActorDiedError(), ChannelLost("replica r")])
def test_a_stream_whose_replica_died_is_charged_an_estimate(tmp_path, death):
    """The prompt as the first chunk counted it, a token per chunk relayed, marked estimated."""
    frames = [ChunkFrame('{"a":1}', prompt_tokens=12), ChunkFrame('{"b":2}'), death]
    client = make_client(
        FakeHandle(frames), key_records=[scoped()], limiter=local_limiter(tmp_path)
    )
    response = client.post(
        "/v1/chat/completions", json={**CHAT, "stream": True}, headers=bearer("s3cret")
    )
    lines = sse_lines(response)
    assert lines[:2] == ['data: {"a":1}', 'data: {"b":2}'] and lines[-1] == "data: [DONE]"
    assert '"error"' in lines[2]
    with sqlite3.connect(tmp_path / "ledger.sqlite3") as db:
        rows = db.execute("SELECT input_tokens, output_tokens, estimated FROM usage_minutes")
        assert rows.fetchall() == [(12, 2, 1)]


def test_a_stream_that_failed_on_its_replica_is_not_estimated_there(tmp_path):
    """An error the replica raised (it lives, and charges what its engine did itself)."""
    frames = [ChunkFrame('{"a":1}', prompt_tokens=12), RuntimeError("engine failed")]
    limiter = local_limiter(tmp_path)
    client = make_client(FakeHandle(frames), key_records=[scoped()], limiter=limiter)
    client.post("/v1/chat/completions", json={**CHAT, "stream": True}, headers=bearer("s3cret"))
    assert run(limiter.target.ledger.usage_totals(0)) == []


def test_a_charge_is_delivered_through_a_limiter_that_died(monkeypatch):
    monkeypatch.setattr(usage_module, "RETRY_S", 0.01)
    calls = []

    class Limiter:
        class charge:  # noqa: N801 - a handle's method
            @staticmethod
            async def remote(charges):
                calls.append(charges)
                if len(calls) < 3:
                    raise ActorDiedError()
                return True

    item = Charge(key="k", model="m", kind="completions", route="/v1/completions")
    assert asyncio.run(deliver(Limiter, item)) is True
    assert len(calls) == 3


def test_a_response_whose_charge_the_ledger_did_not_take_says_so(tmp_path, monkeypatch):
    """The store refuses: the limiter keeps the charges (written once the store is back), and
    the responses are not passed off as recorded."""
    failing = ledger_down(monkeypatch)
    limiter = local_limiter(tmp_path)
    stream = [ChunkFrame('{"a":1}'), UsageFrame({"prompt_tokens": 4, "completion_tokens": 2})]
    headers = bearer("s3cret")
    unary = make_client(FakeHandle(OK), key_records=[scoped()], limiter=limiter)
    answered = unary.post("/v1/chat/completions", json=CHAT, headers=headers)
    assert answered.status_code == 200 and answered.json() == {"ok": True}
    assert answered.headers["x-usage-recorded"] == "false"
    streamed = make_client(FakeHandle(stream), key_records=[scoped()], limiter=limiter).post(
        "/v1/chat/completions", json={**CHAT, "stream": True}, headers=headers
    )
    assert streamed.text.endswith(
        ": usage not recorded yet (the ledger did not take it; it is retried)\n\ndata: [DONE]\n\n"
    )
    failing[0] = False
    assert (
        "x-usage-recorded"
        not in unary.post("/v1/chat/completions", json=CHAT, headers=headers).headers
    )
    with sqlite3.connect(tmp_path / "ledger.sqlite3") as db:
        totals = "SELECT SUM(requests), SUM(input_tokens) FROM usage_minutes"
        assert db.execute(totals).fetchone() == (3, 12)
