"""The usage ledger in the store, on both backends (SQLite, and a real PostgreSQL server)."""

import asyncio
import time

from tests.unit.stores import run

T0 = 1_780_000_000 // 86400 * 86400  # a UTC midnight


def charge(at, key="team-a", model="m", kind="completions", **counts):
    return {
        "at": at,
        "id": counts.pop("id", ""),
        "key": key,
        "model": model,
        "kind": kind,
        "batch": counts.pop("batch", False),
        "estimated": counts.pop("estimated", False),
        "input_tokens": counts.get("input_tokens", 0),
        "output_tokens": counts.get("output_tokens", 0),
        "cached_tokens": counts.get("cached_tokens", 0),
        "audio_seconds": counts.get("audio_seconds", 0.0),
    }


def test_charges_of_one_minute_add_up_and_concurrent_writers_lose_nothing(make_store):
    store = make_store()

    async def many():
        await asyncio.gather(
            *(store.add_usage([charge(T0 + i % 60, input_tokens=3, output_tokens=2)])
              for i in range(40))
        )  # fmt: skip

    run(many())
    (row,) = run(store.usage_buckets("completions", T0, T0 + 60, 60))
    assert row == {
        "bucket": T0,
        "requests": 40,
        "input_tokens": 120,
        "output_tokens": 80,
        "cached_tokens": 0,
        "audio_seconds": 0.0,
    }


def test_a_charge_sent_again_is_added_once(make_store):
    """Its limiter died after the commit, before its answer: the ingress sends it again, to
    the next limiter, maybe in a later minute, maybe beside itself."""
    store = make_store()
    first = [charge(T0 + 1, id="req-1", input_tokens=5), charge(T0 + 2, id="req-1/cut")]
    assert run(store.add_usage(first)) == [True, True]
    again = charge(T0 + 61, id="req-1", input_tokens=5)
    assert run(store.add_usage([again, charge(T0 + 62, id="req-2"), again])) == [
        False,
        True,
        False,
    ]
    rows = run(store.usage_buckets("completions", T0, T0 + 120, 120))
    assert [(r["requests"], r["input_tokens"]) for r in rows] == [(3, 5)]


def test_buckets_group_and_filter_like_the_usage_api(make_store):
    store = make_store()
    run(
        store.add_usage(
            [
                charge(T0 + 5, input_tokens=10, output_tokens=1),
                charge(T0 + 70, key="team-b", input_tokens=20, output_tokens=2),
                charge(T0 + 3700, model="other", input_tokens=30, batch=True),
                charge(T0 + 86400 + 1, input_tokens=40),  # the next day
                charge(T0 + 9, kind="embeddings", input_tokens=99),  # another kind
                charge(T0 + 11, kind="audio_transcriptions", audio_seconds=2.5),
                charge(T0 + 12, output_tokens=5, estimated=True),
            ]
        )
    )
    hours = run(store.usage_buckets("completions", T0, T0 + 86400, 3600))
    assert [(r["bucket"], r["requests"], r["input_tokens"]) for r in hours] == [
        (T0, 3, 30),
        (T0 + 3600, 1, 30),
    ]
    assert hours[0]["output_tokens"] == 8  # estimated counts are summed with the rest
    by_key = run(store.usage_buckets("completions", T0, T0 + 2 * 86400, 86400, ["api_key"]))
    assert [(r["bucket"], r["api_key"], r["input_tokens"]) for r in by_key] == [
        (T0, "team-a", 40),
        (T0, "team-b", 20),
        (T0 + 86400, "team-a", 40),
    ]
    only = run(
        store.usage_buckets(
            "completions", T0, T0 + 86400, 86400, ["model", "batch"], models=["other"],
            batch=True,
        )
    )  # fmt: skip
    assert [(r["model"], r["batch"], r["input_tokens"]) for r in only] == [("other", 1, 30)]
    keyed = run(store.usage_buckets("completions", T0, T0 + 86400, 86400, keys=["team-b"]))
    assert [r["input_tokens"] for r in keyed] == [20]
    audio = run(store.usage_buckets("audio_transcriptions", T0, T0 + 60, 60))
    assert audio[0]["audio_seconds"] == 2.5 and audio[0]["requests"] == 1


def test_totals_per_key_come_back_after_a_restart(make_store):
    store = make_store()
    run(
        store.add_usage(
            [
                charge(T0 + 1, input_tokens=10, output_tokens=5),
                charge(T0 + 61, input_tokens=1, audio_seconds=1.5),
                charge(T0 + 62, key="team-b", output_tokens=7),
                charge(T0 - 120, input_tokens=1000),  # before `since`
            ]
        )
    )
    run(store.close())
    again = make_store()
    assert sorted(run(again.usage_totals(T0))) == [
        ("team-a", 2.0, 16.0, 1.5),
        ("team-b", 1.0, 7.0, 0.0),
    ]


def test_cleanup_deletes_usage_past_its_retention(make_store):
    store = make_store()
    store.usage_retention_s = 86400
    old, now = charge(T0, input_tokens=1), charge(time.time(), input_tokens=1)
    run(store.add_usage([old, now]))
    run(store.cleanup())
    assert run(store.usage_totals(0)) == [("team-a", 1.0, 1.0, 0.0)]
