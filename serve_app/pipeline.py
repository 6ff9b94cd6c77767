"""The one request pipeline of the model routes: admit (model scope, rate limits) -> dispatch
-> respond, then tell the observers what the request did.

Routes parse, pick a model and call ``admit`` then ``run_backend``; they never record usage or
statuses themselves. Observers (the rate limiter's usage budgets today) get one ``Finished``
record per dispatched request, after its last byte.
"""

import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from fastapi import Request
from fastapi.responses import Response

from serve_app.auth import APIKey, authorize_model
from serve_app.dispatch import frames_to_response
from serve_app.log import LOGGER
from serve_app.registry import ModelRegistry, ServedModel

logger = logging.getLogger(LOGGER)


@dataclass
class Finished:
    """One dispatched request, as the observers see it."""

    request_id: str
    route: str
    model: str
    key: APIKey | None
    started: float = field(default_factory=time.monotonic)
    usage: dict[str, float] = field(default_factory=dict)  # usage kind -> amount
    status: int = 0

    def add_usage(self, kind: str, amount: float) -> None:
        self.usage[kind] = self.usage.get(kind, 0.0) + amount


class Observer(Protocol):
    def finished(self, record: Finished) -> None:
        """Called once per dispatched request, after its last byte; must not block."""


def registry(request: Request) -> ModelRegistry:
    return request.app.state.registry


def request_id_of(request: Request) -> str:
    """The request id Serve's proxy assigned (or the client sent as ``x-request-id``).

    Serve's proxy sets the header on every request and echoes it on every response; outside
    Serve (unit tests) a fresh id is made once per request.
    """
    request_id = request.headers.get("x-request-id") or getattr(request.state, "request_id", "")
    if not request_id:
        request_id = request.state.request_id = uuid.uuid4().hex
    return request_id


async def admit(request: Request, model: ServedModel, key: APIKey | None) -> Finished:
    """403 if the key may not use ``model``; 429 if it is over a rate limit. Returns the
    record the rest of the pipeline fills in."""
    authorize_model(key, model.id, model.config.aliases)
    await request.app.state.rate_limits.admit(key, model.family.usage)
    return Finished(request_id_of(request), request.url.path, model.id, key)


async def run_backend(
    request: Request, model: ServedModel, record: Finished, stream: bool, call: Callable[[], Any]
) -> Response:
    """Make ``call()`` (a streaming handle call) and answer with its frames.

    The first frame must come within the stream TTFT limit (streams) or the request timeout
    (everything else). Usage and the final status go into ``record``; the observers get it
    once the response is complete.
    """
    limits = request.app.state.registry.config.limits
    observers: list[Observer] = request.app.state.observers
    logger.info(
        "%s model=%s key=%s [request_id=%s]",
        record.route,
        record.model,
        record.key.name if record.key else "-",
        record.request_id,
    )

    def on_finish(status: int) -> None:
        record.status = status
        for observer in observers:
            try:
                observer.finished(record)
            except Exception:
                logger.exception("observer failed [request_id=%s]", record.request_id)

    return await frames_to_response(
        call,
        record.request_id,
        timeout_s=limits.stream_ttft_timeout_s if stream else limits.request_timeout_s,
        retry_after_s=limits.retry_after_s,
        on_usage=lambda amount: record.add_usage(model.family.usage, amount),
        on_finish=on_finish,
    )
