"""The Usage API on the ingress, over a real ledger (SQLite) that the ingress's charges fill:
its scope, its buckets, groups, filters and pages, and a 400 for every bad parameter."""

import time

import pytest
from fastapi.testclient import TestClient

from deployments.common.contracts import JSONFrame
from serve_app.admission import RateLimits
from serve_app.auth import APIKey, KeyStore
from serve_app.config import AppConfig
from serve_app.ingress import create_app
from serve_app.ratelimit import RateLimiter
from serve_app.registry import ModelRegistry
from serve_app.settings import Settings
from serve_app.store import HandleStore
from serve_app.store.deployment import ResponseStore
from tests.openai_schema import validate
from tests.unit.fakes import FakeHandle, LocalHandle
from tests.unit.test_ingress import assert_envelope

READER = {"Authorization": "Bearer r"}
USAGE = {"prompt_tokens": 5.0, "completion_tokens": 3.0}


@pytest.fixture
def client(tmp_path):
    config = AppConfig.model_validate(
        {
            "models": [
                {"id": "chat", "family": "llm", "source": "x"},
                {"id": "emb", "family": "embedding", "source": "y", "dimensions": 2},
            ]
        }
    )
    handles = {
        "chat": FakeHandle([JSONFrame({"ok": True}, usage=USAGE)]),
        "emb": FakeHandle([JSONFrame({"data": []}, usage={"prompt_tokens": 4.0})]),
    }
    registry = ModelRegistry(config, handles, created=1)
    keys = [
        APIKey(name="team-a", secret="a"),  # every endpoint: `*` does not give `usage`
        APIKey(name="team-b", secret="b"),
        APIKey(name="reader", secret="r", endpoints=["usage"]),
    ]
    store = LocalHandle(ResponseStore({"path": str(tmp_path / "s.sqlite3")}))
    limits = RateLimits(LocalHandle(RateLimiter(store)))
    app = create_app(registry, Settings(), KeyStore(keys), limits, store=HandleStore(store))
    with TestClient(app, raise_server_exceptions=False) as made:
        yield made


def chat(client, secret):
    body = {"model": "chat", "messages": [{"role": "user", "content": "hi"}]}
    response = client.post("/v1/chat/completions", json=body, headers={"Authorization": secret})
    assert response.status_code == 200


def usage(client, kind="completions", headers=READER, **params):
    return client.get(f"/v1/organization/usage/{kind}", params=params, headers=headers)


def test_only_a_key_with_the_usage_scope_reads_usage(client):
    start = int(time.time()) - 60
    denied = usage(client, headers={"Authorization": "Bearer a"}, start_time=start)
    assert_envelope(denied, 403, "permission_denied")
    assert usage(client, start_time=start).status_code == 200


def test_buckets_hold_each_keys_charges_grouped_and_filtered(client):
    now = int(time.time())
    for secret in ("Bearer a", "Bearer a", "Bearer b"):
        chat(client, secret)
    embedded = client.post(
        "/v1/embeddings", json={"model": "emb", "input": "x"}, headers={"Authorization": "Bearer b"}
    )
    assert embedded.status_code == 200
    start = now - now % 60 - 3600
    page = usage(client, start_time=start, bucket_width="1h", limit=2).json()
    validate(page, "UsageResponse")
    assert [b["start_time"] for b in page["data"]] == [start, start + 3600]
    assert page["data"][0]["results"] == [] and page["has_more"] is False
    (total,) = page["data"][1]["results"]
    validate(total, "UsageCompletionsResult")
    assert (total["num_model_requests"], total["input_tokens"], total["output_tokens"]) == (
        3,
        15,
        9,
    )
    assert total["api_key_id"] is None and total["model"] is None
    grouped = usage(client, start_time=start, bucket_width="1d", **{"group_by[]": "api_key_id"})
    results = {r["api_key_id"]: r["input_tokens"] for r in grouped.json()["data"][0]["results"]}
    assert results == {"team-a": 10, "team-b": 5}
    only_b = usage(client, start_time=start, api_key_ids="team-b", group_by=["model", "batch"])
    (result,) = only_b.json()["data"][0]["results"]
    assert (result["model"], result["batch"], result["num_model_requests"]) == ("chat", False, 1)
    assert usage(client, start_time=start, batch="true").json()["data"][0]["results"] == []
    embeddings = usage(client, "embeddings", start_time=start).json()
    validate(embeddings, "UsageResponse")
    (result,) = embeddings["data"][0]["results"]
    assert (result["object"], result["input_tokens"]) == ("organization.usage.embeddings.result", 4)


def test_pages_follow_next_page_to_the_end(client):
    chat(client, "Bearer a")
    now = int(time.time())
    start = now - now % 60 - 5 * 60
    seen, params = [], {"start_time": start, "end_time": now + 60, "bucket_width": "1m"}
    page = usage(client, **params, limit=4).json()
    while True:
        seen += page["data"]
        if not page["has_more"]:
            break
        page = usage(client, **params, limit=4, page=page["next_page"]).json()
    starts = [b["start_time"] for b in seen]
    assert starts == list(range(start, now + 60, 60))
    assert sum(r["num_model_requests"] for b in seen for r in b["results"]) == 1


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({}, "start_time"),
        ({"start_time": "soon"}, "start_time"),
        ({"start_time": 200, "end_time": 100}, "start_time"),
        ({"start_time": 100, "bucket_width": "1w"}, "bucket_width"),
        ({"start_time": 100, "bucket_width": "1d", "limit": 32}, "limit"),
        ({"start_time": 100, "bucket_width": "1m", "limit": 0}, "limit"),
        ({"start_time": 100, "group_by": "colour"}, "group_by"),
        ({"start_time": 100, "page": "not-a-cursor!"}, "page"),
        ({"start_time": 100, "project_ids": "proj_1"}, "project_ids"),
        ({"start_time": 100, "user_ids[]": "u"}, "user_ids"),
        ({"start_time": 100, "batch": "maybe"}, "batch"),
        ({"start_time": 100, "colour": "red"}, "colour"),
    ],
)
def test_a_bad_parameter_is_a_400_naming_it(client, params, param):
    assert assert_envelope(usage(client, **params), 400)["param"] == param


def test_batch_filters_only_completions_and_unknown_kinds_are_404(client):
    refused = usage(client, "embeddings", start_time=100, batch="true")
    assert assert_envelope(refused, 400)["param"] == "batch"
    assert_envelope(usage(client, "images", start_time=100), 404, "not_found")
