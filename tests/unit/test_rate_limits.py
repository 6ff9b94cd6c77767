"""Per-key rate limits and budgets (serve_app/ratelimit.py) and their ingress side
(serve_app/admission.py): windows, day and month budgets, counters restored from the ledger,
charges the store refused, admission leases; through the app with fake backends."""

import asyncio
from types import SimpleNamespace

import pytest
from fastapi.testclient import TestClient

from deployments.common.contracts import Charge, ChunkFrame, JSONFrame, UsageFrame
from serve_app import ratelimit
from serve_app.admission import RateLimits
from serve_app.auth import KeyStore
from serve_app.config import AppConfig
from serve_app.ingress import create_app
from serve_app.ratelimit import RateLimiter
from serve_app.registry import ModelRegistry
from serve_app.settings import Settings
from serve_app.store.deployment import ResponseStore
from serve_app.store.sql import SQLStore
from tests.unit.fakes import FakeHandle, LocalHandle, local_limiter
from tests.unit.stores import run
from tests.unit.test_ingress import CHAT, MODEL, assert_envelope, make_client, sse_lines
from tests.unit.test_security import OK, bearer, scoped


def test_rate_limiter_windows(tmp_path):
    now = [1_780_000_000.0]
    limiter = RateLimiter(local_store(tmp_path), clock=lambda: now[0])
    limits = {"requests_per_minute": 2, "tokens_per_minute": 100}

    def admit(key, limits, kinds=("tokens",)):
        refused = run(limiter.admit(key, limits, kinds))
        return refused and (pytest.approx(refused[0]), refused[1])

    assert admit("k", limits) is None
    now[0] += 10
    assert admit("k", limits) is None
    assert admit("k", limits) == (50, "rate_limit_exceeded")  # the first leaves at +60
    assert admit("other", limits) is None  # keys are independent
    now[0] += 51
    assert admit("k", limits) is None
    assert run(limiter.charge([charge("k", input_tokens=100, output_tokens=50)])) is True
    now[0] += 30
    assert admit("k", {"tokens_per_minute": 100}) == (30, "rate_limit_exceeded")
    assert admit("k", {"audio_seconds_per_minute": 5}, ("audio",)) is None


def test_day_and_month_budgets_are_insufficient_quota_until_the_period_ends(tmp_path):
    day = 1_780_000_000 // 86400 * 86400  # a UTC midnight
    now = [day + 3600.0]
    limiter = RateLimiter(local_store(tmp_path), clock=lambda: now[0])
    budgets = {"tokens_per_day": 100, "audio_seconds_per_month": 10}
    run(limiter.charge([charge("k", input_tokens=60, output_tokens=40)]))
    wait, code = run(limiter.admit("k", budgets, ("tokens",)))
    assert (wait, code) == (86400 - 3600, "insufficient_quota")
    assert run(limiter.admit("k", budgets, ("audio",))) is None
    now[0] = day + 86400 + 1  # the next day
    assert run(limiter.admit("k", budgets, ("tokens",))) is None
    run(limiter.charge([charge("k", audio_seconds=10)]))
    assert run(limiter.admit("k", budgets, ("audio",)))[1] == "insufficient_quota"


def test_counters_come_back_from_the_ledger_after_a_restart(tmp_path):
    """A new limiter (a restart, a redeploy, a kill -9) reads the ledger first: a key over
    its minute, day or month budget is still refused."""
    now = [1_780_000_000.0]
    store = local_store(tmp_path)
    first = RateLimiter(store, clock=lambda: now[0])
    run(
        first.charge([charge("k", input_tokens=90, output_tokens=20), charge("j", output_tokens=1)])
    )
    now[0] += 20
    again = RateLimiter(store, clock=lambda: now[0])
    assert run(again.admit("j", {"requests_per_minute": 1}))[1] == "rate_limit_exceeded"
    assert (
        run(again.admit("k", {"tokens_per_minute": 100}, ("tokens",)))[1] == "rate_limit_exceeded"
    )
    assert run(again.admit("j", {"tokens_per_minute": 100}, ("tokens",))) is None
    assert run(again.admit("k", {"tokens_per_day": 110}, ("tokens",)))[1] == "insufficient_quota"
    assert run(again.admit("k", {"tokens_per_month": 111}, ("tokens",))) is None


def ledger_down(monkeypatch) -> list[bool]:
    """The store refuses ledger writes while ``[0]`` of the returned list is True; the
    limiter tries again every 50 ms."""
    monkeypatch.setattr(ratelimit, "RETRY_S", 0.05)
    failing = [True]
    add_usage = SQLStore.add_usage

    async def flaky(self, charges):
        if failing[0]:
            raise ConnectionError("store down")
        return await add_usage(self, charges)

    monkeypatch.setattr(SQLStore, "add_usage", flaky)
    return failing


def test_a_charge_the_store_refuses_is_kept_counted_and_written_later(tmp_path, monkeypatch):
    failing = ledger_down(monkeypatch)
    store = ResponseStore({"path": str(tmp_path / "ledger.sqlite3")})
    limiter = RateLimiter(LocalHandle(store))

    async def scenario():
        assert await limiter.charge([charge("k", input_tokens=7)]) is False
        assert (await limiter.admit("k", {"tokens_per_minute": 5}, ("tokens",)))[0] > 0
        failing[0] = False
        await asyncio.sleep(0.3)
        return await store.call("usage_totals", 0)

    assert run(scenario()) == [("k", 1.0, 7.0, 0.0)]


def test_rate_limit_is_429_with_retry_after_and_counts_usage(tmp_path):
    key = scoped(limits={"requests_per_minute": 100, "tokens_per_minute": 15})
    client = make_client(FakeHandle(OK), key_records=[key], limiter=local_limiter(tmp_path))
    headers = bearer("s3cret")
    assert client.post("/v1/chat/completions", json=CHAT, headers=headers).status_code == 200
    assert client.post("/v1/chat/completions", json=CHAT, headers=headers).status_code == 200
    limited = client.post("/v1/chat/completions", json=CHAT, headers=headers)
    assert_envelope(limited, 429, "rate_limit_exceeded")
    assert limited.json()["error"]["type"] == "rate_limit_error"
    assert 1 <= int(limited.headers["retry-after"]) <= 60


def test_stream_usage_is_charged_to_the_ledger_not_sent(tmp_path):
    limiter = local_limiter(tmp_path)
    key = scoped(limits={"tokens_per_minute": 1000})
    frames = [ChunkFrame('{"a":1}'), UsageFrame({"prompt_tokens": 40, "completion_tokens": 2})]
    client = make_client(FakeHandle(frames), key_records=[key], limiter=limiter)
    response = client.post(
        "/v1/chat/completions", json={**CHAT, "stream": True}, headers=bearer("s3cret")
    )
    assert sse_lines(response) == ['data: {"a":1}', "data: [DONE]"]
    (row,) = run(limiter.target.ledger.usage_buckets("completions", 0, 2**40, 2**40, ["api_key"]))
    assert (row["api_key"], row["requests"], row["input_tokens"], row["output_tokens"]) == (
        "scoped",
        1,
        40,
        2,
    )


def charge(key, **counts):
    return Charge(key=key, model=MODEL, kind="completions", route="/v1/chat/completions", **counts)


def local_store(tmp_path):
    return LocalHandle(ResponseStore({"path": str(tmp_path / "ledger.sqlite3")}))


class LateCharge(LocalHandle):
    """The limiter's handle, with ``charge`` calls that land 0.2 s after they are made, as a
    call on its way to the limiter replica may: the charge is not done when ``remote``
    returns."""

    def __getattr__(self, name: str):
        if name != "charge":
            return super().__getattr__(name)

        async def later(*args):
            await asyncio.sleep(0.2)
            return await self.target.charge(*args)

        return SimpleNamespace(remote=lambda *args: asyncio.ensure_future(later(*args)))


def test_a_spent_token_budget_refuses_the_very_next_request(tmp_path):
    """The response ends only once its usage is charged: the client's next request sees it."""
    key = scoped(limits={"requests_per_minute": 100, "tokens_per_minute": 15})
    limiter = LateCharge(local_limiter(tmp_path).target)
    client = make_client(FakeHandle(OK), key_records=[key], limiter=limiter)
    headers = bearer("s3cret")
    assert client.post("/v1/chat/completions", json=CHAT, headers=headers).status_code == 200
    assert client.post("/v1/chat/completions", json=CHAT, headers=headers).status_code == 200
    limited = client.post("/v1/chat/completions", json=CHAT, headers=headers)
    assert_envelope(limited, 429, "rate_limit_exceeded")


def test_audio_seconds_per_minute_limit(tmp_path):

    config = AppConfig.model_validate(
        {"models": [{"id": "stt", "family": "whisper", "source": "y"}]}
    )
    whisper = FakeHandle([JSONFrame({"text": "hi"}, usage={"audio_seconds": 3.0})])  # 3 s of audio
    registry = ModelRegistry(config, {"stt": whisper}, 1, FakeHandle([]))
    key = scoped(limits={"audio_seconds_per_minute": 2})
    app = create_app(registry, Settings(), KeyStore([key]), RateLimits(local_limiter(tmp_path)))
    client = TestClient(app, raise_server_exceptions=False)

    def transcribe():
        return client.post(
            "/v1/audio/transcriptions",
            files={"file": ("a.wav", b"RIFF")},
            headers=bearer("s3cret"),
        )

    assert transcribe().status_code == 200
    assert_envelope(transcribe(), 429, "rate_limit_exceeded")
    assert len(whisper.calls) == 1  # the refused request never reached a replica


def test_a_lease_holds_a_share_of_what_is_left_and_gives_back_what_it_did_not_use(tmp_path):
    now = [1_780_000_000.0]
    limiter = RateLimiter(local_store(tmp_path), clock=lambda: now[0])
    limits = {"requests_per_minute": 1000, "tokens_per_minute": 1000, "tokens_per_day": 400}

    def admit(holder, unused=0, limits=limits):
        return run(limiter.admit("k", limits, ("tokens",), holder, unused))

    first = admit("a")  # 1 request counted; a quarter of the day's 400 tokens leased
    assert (first.requests, first.headroom, first.seconds) == (32, {"tokens": 100.0}, 2.0)
    assert limiter._window("k", "requests", now[0]).total == 1 + ratelimit.LEASE_MAX
    second = admit("b")  # another ingress replica: a quarter of what the first left
    assert second.headroom == {"tokens": 75.0}
    again = admit("a", unused=30)  # a's lease ends: 30 of its requests given back
    assert limiter._window("k", "requests", now[0]).total == 1 + 32 + 1 + 32 - 30 + 1 + 32
    assert again.headroom == {"tokens": (400 - 75) / 4}
    now[0] += ratelimit.LEASE_S  # leases out expire: their shares are free again
    run(limiter.charge([charge("k", input_tokens=390)]))
    assert admit("a").headroom == {"tokens": 2.5}  # a lease admits what asking would
    run(limiter.charge([charge("k", input_tokens=10)]))
    assert admit("a")[1] == "insufficient_quota"
    close = {"requests_per_minute": 4}  # fewer than 4 requests left: no lease
    assert run(limiter.admit("j", close, (), "a")) is None


class CountingLimiter:
    """A limiter's handle that counts the ``admit`` calls that reach it."""

    def __init__(self, limiter):
        self.limiter, self.asked = limiter, 0
        self.deployment_name, self.app_name = "rate-limiter", "openai"

    def __getattr__(self, name):
        return getattr(self.limiter, name)

    @property
    def admit(self):
        def remote(*args):
            self.asked += 1
            return self.limiter.admit.remote(*args)

        return SimpleNamespace(remote=remote)


def test_leased_requests_are_admitted_without_asking_until_their_usage_is_spent(tmp_path):
    """40 requests of 10 tokens ask the limiter once per lease; once the lease's share of
    the minute's tokens is charged, the next request asks; a spent minute is refused as
    without leases."""
    handle = CountingLimiter(local_limiter(tmp_path))
    key = scoped(limits={"tokens_per_minute": 400})
    client = make_client(FakeHandle(OK), key_records=[key], limiter=handle)
    codes = [
        client.post("/v1/chat/completions", json=CHAT, headers=bearer("s3cret")).status_code
        for _ in range(45)
    ]
    # Leases of 100, 75, 56.25, ... tokens: 11, 8, 6, ... requests each; 40 spend the 400.
    assert codes == [200] * 40 + [429] * 5
    assert handle.asked < 20


def test_a_request_cut_short_ends_the_keys_lease(tmp_path):
    """Its replica charges it, not this ingress: the next request asks the limiter."""
    handle = CountingLimiter(local_limiter(tmp_path))
    limits = RateLimits(handle)
    key = scoped(limits={"tokens_per_minute": 1000})
    run(limits.admit(key, ("tokens",)))
    run(limits.admit(key, ("tokens",)))
    assert handle.asked == 1
    limits.finished(SimpleNamespace(key=key, status=499, lost=False, charge=lambda _: None))
    run(limits.admit(key, ("tokens",)))
    assert handle.asked == 2


def test_concurrent_requests_of_a_key_wait_for_one_ask(tmp_path):
    handle = CountingLimiter(local_limiter(tmp_path))
    limits = RateLimits(handle)
    key = scoped(limits={"requests_per_minute": 1000})

    async def burst():
        await asyncio.gather(*(limits.admit(key) for _ in range(20)))

    run(burst())
    assert handle.asked == 1
