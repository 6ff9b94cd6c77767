"""Every token counted, on the running app: a client that leaves mid-stream is charged what
the engine did (as vLLM's own metrics count it), a budget is spent by such clients too, and
the ledger answers OpenAI's Usage API through the official SDK."""

import time

import httpx
import openai
import pytest
from openai import OpenAI

from tests.audio_files import SPEECH_EN
from tests.serve.conftest import API_KEY
from tests.serve.replicas import wait_engine_idle
from tests.serve.test_metrics_api import scrape, total
from tests.waiting import wait_until

pytestmark = pytest.mark.serve

LLM = "smollm2-135m-instruct"
STT = "whisper-tiny.en"
EMBEDDING = "all-minilm-l6-v2"
STORY = {
    "model": LLM,
    "messages": [{"role": "user", "content": "Tell me a long story."}],
    "max_tokens": 1500,
    "ignore_eos": True,
    "stream": True,
}


def engine_counts(url: str) -> tuple[float, float]:
    """vLLM's own counts of prompt and generated tokens for the LLM, all replicas."""
    samples = scrape(url)
    labels = {"model_name": LLM}
    return (
        total(samples, "ray_vllm_prompt_tokens_total", labels),
        total(samples, "ray_vllm_generation_tokens_total", labels),
    )


def quiet_engine_counts(url: str) -> tuple[float, float]:
    """``engine_counts`` once they have stayed the same over more than a metrics export
    interval (Ray's is 10 s), so that no earlier request's tokens are still on their way."""
    last = None

    def quiet():
        nonlocal last
        counts, last = last, engine_counts(url)
        return counts == last and last

    return wait_until(quiet, 90, "vLLM's token counters to settle", interval_s=11)


def usage_of(base_url: str, kind: str, key: str, since: int) -> list:
    """The Usage API's results of ``kind`` for ``key`` since ``since``, by day."""
    reader = OpenAI(base_url=f"{base_url}/v1", api_key="-", admin_api_key="usage-reader-secret")
    page = getattr(reader.admin.organization.usage, kind)(
        start_time=since, bucket_width="1d", group_by=["api_key_id"], api_key_ids=[key]
    )
    return [r for bucket in page.data for r in bucket.results]


def ledger(base_url: str, key: str, since: int) -> dict:
    """The ledger's completions usage of ``key`` since ``since``."""
    results = usage_of(base_url, "completions", key, since)
    return {
        "requests": sum(r.num_model_requests for r in results),
        "input": sum(r.input_tokens for r in results),
        "output": sum(r.output_tokens for r in results),
    }


def heard(base_url: str, key: str, since: int) -> dict:
    """The ledger's audio usage of ``key`` since ``since``."""
    results = usage_of(base_url, "audio_transcriptions", key, since)
    return {
        "requests": sum(r.num_model_requests for r in results),
        "seconds": sum(r.seconds for r in results),
    }


def leave_mid_stream(base_url: str, secret: str, events: int = 5) -> int:
    """Stream a long answer, read ``events`` of it and hang up; the HTTP status."""
    headers = {"Authorization": f"Bearer {secret}"}
    with (
        httpx.Client(base_url=base_url, headers=headers, timeout=60) as http,
        http.stream("POST", "/v1/chat/completions", json=STORY) as response,
    ):
        if response.status_code == 200:
            lines = (line for line in response.iter_lines() if line.startswith("data: "))
            for _ in range(events):
                next(lines)
        return response.status_code


def charged_as_the_engine_counted(base_url: str, metrics_url: str, key: str, cut_short) -> dict:
    """Run ``cut_short()`` (requests of ``key``, the last of which ends before its usage
    frame; it returns how many); their charges in the ledger, once those equal what vLLM's
    own counters added meanwhile."""
    since = int(time.time()) - 60
    prompt_before, generated_before = quiet_engine_counts(metrics_url)
    made = cut_short()

    def settled():
        charged = ledger(base_url, key, since)
        prompt, generated = engine_counts(metrics_url)
        engine = (prompt - prompt_before, generated - generated_before)
        counted = charged["requests"] and (charged["input"], charged["output"]) == engine
        return charged if counted else None

    charged = wait_until(settled, 60, f"{key}'s charge to match vLLM's counts")
    assert charged["requests"] == made

    # Prometheus counts the same charges, the last marked as cut short.
    def exported() -> bool:
        samples, labels = scrape(metrics_url), {"key": key, "kind": "completion"}
        cancelled = total(samples, "ray_openai_api_tokens_total", {**labels, "ended": "cancelled"})
        return (
            cancelled > 0
            and total(samples, "ray_openai_api_tokens_total", labels) == charged["output"]
        )

    wait_until(exported, 30, "the tokens in Prometheus")
    return charged


def test_a_client_that_leaves_mid_stream_is_charged_what_the_engine_did(base_url, metrics_url):
    def leave() -> int:
        assert leave_mid_stream(base_url, "leaver-secret") == 200
        return 1

    charged = charged_as_the_engine_counted(base_url, metrics_url, "leaver", leave)
    assert 4 <= charged["output"] < 1500  # cut short; the client saw 4 tokens (and the role)


def test_a_request_that_times_out_is_504_and_charged_what_the_engine_did(base_url, metrics_url):
    client = OpenAI(base_url=f"{base_url}/v1", api_key="waiter-secret", max_retries=0)

    def time_out() -> int:
        start = time.monotonic()
        with pytest.raises(openai.APIStatusError) as info:
            client.chat.completions.create(
                model=LLM,
                messages=[{"role": "user", "content": "Count from 1 to 2000."}],
                max_tokens=1900,
                temperature=0,
                extra_body={"ignore_eos": True},  # vLLM's: 1900 tokens take over 80 s here
            )
        assert info.value.status_code == 504
        assert info.value.code == "timeout"
        assert 60 <= time.monotonic() - start < 70  # the session's request_timeout_s is 60
        return 1

    charged = charged_as_the_engine_counted(base_url, metrics_url, "waiter", time_out)
    assert 0 < charged["output"] < 1900  # the generation was aborted at the timeout
    wait_engine_idle(5)


def test_a_cancelled_background_response_is_charged_what_the_engine_did(base_url, metrics_url):
    client = OpenAI(base_url=f"{base_url}/v1", api_key="canceller-secret", max_retries=0)

    def cancel() -> int:
        # sampled, SmolLM2 sometimes answers in a few tokens, before the cancel: try again
        for made in range(1, 4):
            response = client.responses.create(
                model=LLM, input="Tell me a long story.", background=True, max_output_tokens=1500
            )
            running = lambda rid=response.id: client.responses.retrieve(rid).status != "queued"  # noqa: E731
            wait_until(running, 60, "the response to start")
            time.sleep(1)  # some tokens
            if client.responses.cancel(response.id).status == "cancelled":
                return made
        raise AssertionError("three answers ended before their cancel")

    charged_as_the_engine_counted(base_url, metrics_url, "canceller", cancel)


def test_leaving_mid_stream_in_a_loop_spends_the_budget(base_url):
    """Without charges for work cut short, this key would never be refused."""
    statuses = []
    for _ in range(30):
        statuses.append(leave_mid_stream(base_url, "leaver-on-a-budget-secret", events=2))
        if statuses[-1] != 200:
            break
    assert statuses[-1] == 429, statuses
    refused = httpx.post(
        f"{base_url}/v1/chat/completions",
        json={**STORY, "stream": False, "max_tokens": 1},
        headers={"Authorization": "Bearer leaver-on-a-budget-secret"},
    )
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "insufficient_quota"
    assert int(refused.headers["retry-after"]) <= 86400


def test_the_usage_api_through_the_sdk(base_url, client):
    start = int(time.time()) // 60 * 60 - 120
    client.chat.completions.create(
        model=LLM, messages=[{"role": "user", "content": "Hi"}], max_tokens=4
    )
    client.embeddings.create(model=EMBEDDING, input=["usage", "api"])
    with SPEECH_EN.open("rb") as audio:
        client.audio.transcriptions.create(model=STT, file=audio)
    admin = OpenAI(base_url=f"{base_url}/v1", api_key="-", admin_api_key=API_KEY, max_retries=0)
    usage = admin.admin.organization.usage

    def seen(kind: str, **params) -> list:
        page = getattr(usage, kind)(start_time=start, **params)
        return [r for bucket in page.data for r in bucket.results]

    for width in ("1m", "1h", "1d"):
        by_key = wait_until(
            lambda w=width: seen("completions", bucket_width=w, group_by=["api_key_id", "model"]),
            30,
            "completions usage",
        )
        assert any(r.api_key_id == "env-1" and r.model == LLM for r in by_key)
        assert all(r.num_model_requests >= 0 and r.input_tokens >= 0 for r in by_key)
    embedded = seen("embeddings", bucket_width="1h", group_by=["model"])
    assert any(r.model == EMBEDDING and r.input_tokens > 0 for r in embedded)
    heard = seen("audio_transcriptions", bucket_width="1d", group_by=["model", "api_key_id"])
    assert any(r.model == STT and r.seconds >= 1 for r in heard)
    # Pages of one minute each, followed to the end, hold every minute once.
    end = int(time.time()) // 60 * 60 + 60
    starts, page = [], usage.completions(start_time=start, end_time=end, bucket_width="1m", limit=1)
    while True:
        starts += [bucket.start_time for bucket in page.data]
        if not page.has_more:
            break
        page = usage.completions(
            start_time=start, end_time=end, bucket_width="1m", limit=1, page=page.next_page
        )
    assert starts == list(range(start, end, 60))
    denied = httpx.get(
        f"{base_url}/v1/organization/usage/completions",
        params={"start_time": start},
        headers={"Authorization": "Bearer leaver-secret"},
    )
    assert denied.status_code == 403 and denied.json()["error"]["code"] == "permission_denied"
