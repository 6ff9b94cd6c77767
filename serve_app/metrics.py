"""The API's Prometheus metrics (``ray.serve.metrics``): the ingress's, one pipeline
observer, and the token and audio counters the rate limiter counts from each charge (so they
include usage that model replicas charged for work cut short, and agree with the ledger).

Ray's metrics agent exports them with a ``ray_`` prefix (counters also get ``_total``) next
to Serve's own and vLLM's engine metrics; ``METRICS`` lists what is exported and the README's
metrics table and ``cluster/grafana-dashboard.json`` use these names. Serve adds the
``deployment``, ``replica`` and ``application`` labels.

Labels are bounded: ``model`` is a configured model id (empty when the request named none
that is configured), ``route`` a route of the API (``other`` for unknown paths), ``key`` a
configured key name (empty when no key was accepted, never the secret), ``code`` the error
envelope's ``code`` (empty on success), ``ended`` one of ``completed``, ``cancelled``,
``failed``, ``lost``.
"""

from collections import Counter as Tally
from typing import Any

from ray.serve import metrics

from deployments.llm.adapters import METRICS as ADAPTER_METRICS

# Seconds: from a tenth of a second (a small completion) to the request timeout.
LATENCY_BUCKETS = [0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 60, 120, 300, 600]
TTFT_BUCKETS = [0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 2, 5, 10, 30]
# Charge field -> ``kind`` label; reasoning tokens are part of completion, also counted alone.
TOKEN_KINDS = {
    "input_tokens": "prompt",
    "output_tokens": "completion",
    "reasoning_tokens": "reasoning",
}

# Exported name -> (type, labels, meaning); the README's table is this dict.
METRICS = {
    "ray_openai_api_requests_total": (
        "counter",
        "model, route, status, code, key",
        "Finished requests by HTTP status (499: the client went away) and error code.",
    ),
    "ray_openai_api_request_duration_seconds": (
        "histogram",
        "model, route, stream",
        "Whole-request latency at the ingress, until the last byte.",
    ),
    "ray_openai_api_time_to_first_token_seconds": (
        "histogram",
        "model, route",
        "Streams: time until the first event was sent.",
    ),
    "ray_openai_api_tokens_total": (
        "counter",
        "model, route, key, kind, ended",
        "Tokens charged, by kind: prompt, completion, reasoning (part of completion); "
        "`ended`: completed, cancelled (cut short: client gone, timeout, cancel), failed, "
        "lost (the replica died mid-stream: the ingress's estimate). "
        "Counted by the rate limiter from the ledger's charges.",
    ),
    "ray_openai_api_audio_seconds_total": (
        "counter",
        "model, route, key, ended",
        "Seconds of audio transcribed or translated (also `input_audio` chat parts), as "
        "charged to the ledger.",
    ),
    "ray_openai_api_requests_in_flight": (
        "gauge",
        "model",
        "Admitted requests not finished yet, per ingress replica.",
    ),
    **ADAPTER_METRICS,
}


class UsageMetrics:
    """The token and audio counters, counted by the rate limiter from each charge."""

    def __init__(self) -> None:
        self.tokens = metrics.Counter(
            "openai_api_tokens",
            description=METRICS["ray_openai_api_tokens_total"][2],
            tag_keys=("model", "route", "key", "kind", "ended"),
        )
        self.audio_seconds = metrics.Counter(
            "openai_api_audio_seconds",
            description=METRICS["ray_openai_api_audio_seconds_total"][2],
            tag_keys=("model", "route", "key", "ended"),
        )

    def count(self, charge: Any) -> None:
        tags = {"model": charge.model, "route": charge.route, "key": charge.key}
        tags["ended"] = charge.ended
        for name, kind in TOKEN_KINDS.items():
            if amount := getattr(charge, name):
                self.tokens.inc(amount, tags={**tags, "kind": kind})
        if charge.audio_seconds:
            self.audio_seconds.inc(charge.audio_seconds, tags=tags)


class Metrics:
    """Pipeline observer: records every finished request once."""

    def __init__(self) -> None:
        self.requests = metrics.Counter(
            "openai_api_requests",
            description=METRICS["ray_openai_api_requests_total"][2],
            tag_keys=("model", "route", "status", "code", "key"),
        )
        self.duration = metrics.Histogram(
            "openai_api_request_duration_seconds",
            description=METRICS["ray_openai_api_request_duration_seconds"][2],
            boundaries=LATENCY_BUCKETS,
            tag_keys=("model", "route", "stream"),
        )
        self.ttft = metrics.Histogram(
            "openai_api_time_to_first_token_seconds",
            description=METRICS["ray_openai_api_time_to_first_token_seconds"][2],
            boundaries=TTFT_BUCKETS,
            tag_keys=("model", "route"),
        )
        self.in_flight = metrics.Gauge(
            "openai_api_requests_in_flight",
            description=METRICS["ray_openai_api_requests_in_flight"][2],
            tag_keys=("model",),
        )
        self._in_flight: Tally[str] = Tally()

    def admitted(self, record: Any) -> None:
        self._in_flight[record.model] += 1
        self.in_flight.set(self._in_flight[record.model], tags={"model": record.model})

    def finished(self, record: Any) -> None:
        model, route = record.model, record.route
        key = record.key.name if record.key else ""
        if record.admitted:
            self._in_flight[model] -= 1
            self.in_flight.set(self._in_flight[model], tags={"model": model})
        status = {"model": model, "route": route, "status": str(record.status), "key": key}
        self.requests.inc(tags={**status, "code": record.error_code or ""})
        stream = "true" if record.stream else "false"
        self.duration.observe(
            record.ended - record.started, tags={"model": model, "route": route, "stream": stream}
        )
        if record.stream and record.first_byte is not None:
            self.ttft.observe(
                record.first_byte - record.started, tags={"model": model, "route": route}
            )
