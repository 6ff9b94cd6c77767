"""The one request pipeline of the API: record -> admit (model scope, rate limits) ->
dispatch -> respond, then tell the observers what the request did.

``Recorder`` (ASGI middleware) opens one ``Finished`` record per ``/v1`` request, whatever
its outcome (a 401 or 404 too), and hands it to every observer just before the response's
end (its last bytes; a stream's ``[DONE]``). Routes parse, pick a model and call ``admit``
then ``run_backend``; they never record usage, statuses or timings themselves. Observers:
the rate limiter, which charges the request's usage to its key's budgets and the usage
ledger (``serve_app/ratelimit.py``), and the Prometheus metrics (``serve_app/metrics.py``).
"""

import asyncio
import json
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from fastapi import Request
from fastapi.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from deployments.common.contracts import Charge, ErrorFrame, Usage
from deployments.common.usage import Account
from serve_app.auth import APIKey, authorize_model
from serve_app.dispatch import frames_to_response
from serve_app.log import LOGGER, request_id_of
from serve_app.registry import ModelRegistry, ServedModel
from serve_app.sse import DONE

logger = logging.getLogger(LOGGER)

CLIENT_CLOSED = 499  # nginx's status for "the client went away before the answer ended"
# A response's end waits at most this long for its usage to be charged (through a limiter
# that Serve is restarting, say). A charge not committed by then (or refused by the store: the
# limiter keeps it and writes it again) is not passed off as done: the response says so, in
# an ``X-Usage-Recorded: false`` header (unary) or an SSE comment before ``[DONE]`` (streams).
SETTLE_TIMEOUT_S = 10.0
UNRECORDED_HEADER = (b"x-usage-recorded", b"false")
UNRECORDED_COMMENT = b": usage not recorded yet (the ledger did not take it; it is retried)\n\n"
_ERROR_BODY_MAX = 16 * 1024  # error envelopes are small; read their ``code`` up to this size
# Route -> the Usage API's endpoint kind its usage is reported under (others: completions).
LEDGER_KINDS = {
    "/v1/embeddings": "embeddings",
    "/v1/audio/transcriptions": "audio_transcriptions",
    "/v1/audio/translations": "audio_transcriptions",
}


@dataclass
class Finished:
    """One ``/v1`` request, as the observers see it."""

    route: str
    request_id: str = ""
    model: str = ""  # the configured model id, once the request named one
    key: APIKey | None = None
    started: float = field(default_factory=time.monotonic)
    first_byte: float | None = None  # when the first body bytes were sent
    ended: float = 0.0
    stream: bool = False
    admitted: bool = False  # passed admit(): counted in flight until finished
    usage: Usage = field(default_factory=dict)  # count name -> amount (contracts.USAGE_COUNTS)
    estimated: bool = False  # some of ``usage`` is a guess (see ``add_usage``)
    lost: bool = False  # the replica died mid-stream: ``usage`` is the ingress's estimate
    status: int = 0
    error_code: str | None = None
    # The work goes on after the HTTP answer (a background response): whoever runs it
    # reports the record (``report``) when it ends, with its usage.
    deferred: bool = False
    # What observers started that the client's next request must see (a charge to the key's
    # token budget): awaited before the response's last bytes go out.
    settling: list[Any] = field(default_factory=list)

    def add_usage(self, usage: Usage, estimated: bool = False, lost: bool = False) -> None:
        """Add what a model call used; ``estimated``: guessed (an upstream provider that sent
        no usage, or ``lost``: the model replica died before it said)."""
        self.estimated |= estimated
        self.lost |= lost
        for name, amount in usage.items():
            self.usage[name] = self.usage.get(name, 0.0) + amount

    def account(self, limiter: Any) -> Account:
        """Whom this request's usage is charged to; ``limiter``: the rate limiter's handle."""
        return Account(
            key=self.key.name if self.key else "",
            kind=LEDGER_KINDS.get(self.route, "completions"),
            route=self.route,
            limiter=(limiter.deployment_name, limiter.app_name),
            request_id=self.request_id,
        )

    def charge(self, limiter: Any) -> Charge | None:
        """What the request used, as the ledger's charge (None if it used nothing).

        The estimate of a stream whose replica seemed to die is charged under the id the
        replica charges a call cut short with: should the replica live after all (its
        channel alone ended), the ledger adds only the first of the two.
        """
        if not any(self.usage.values()):
            return None
        if self.lost:
            ended = "lost"
        elif self.status < 400 or self.status == CLIENT_CLOSED:
            ended = "completed"
        else:
            ended = "failed"
        account = self.account(limiter)
        return account.charge(self.model, self.usage, ended, self.estimated, cut=self.lost)

    def failed(self, frame: ErrorFrame) -> None:
        """An error the client got inside a stream (its HTTP status was already 200)."""
        self.status, self.error_code = frame.status, frame.code


class Observer(Protocol):
    def admitted(self, record: Finished) -> None:
        """Called when a request passed ``admit``; must not block."""

    def finished(self, record: Finished) -> None:
        """Called once per ``/v1`` request, after its last byte; must not block."""


class Recorder:
    """Pure ASGI middleware: a ``Finished`` record per ``/v1`` request, told to observers."""

    def __init__(
        self, app: ASGIApp, observers: list[Observer], routes: list[tuple[re.Pattern, str]]
    ) -> None:
        self.app = app
        self.observers = observers
        self.routes = routes  # (path regex, path template) of every route of the app

    def route_of(self, path: str) -> str:
        """The template of the route ``path`` is on (``/v1/responses/{response_id}``), or
        ``other``: metrics get one label per route, not per id."""
        for regex, template in self.routes:
            if regex.match(path):
                return template
        return "other"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/v1/"):
            await self.app(scope, receive, send)
            return
        record = Finished(route=self.route_of(scope["path"]))
        state = scope.setdefault("state", {})
        state["record"] = record
        error_body = bytearray()
        complete = reported = False
        held: Message | None = None  # a unary response's start, sent with its last bytes

        def finish() -> None:
            nonlocal reported
            reported = True
            record.ended = time.monotonic()
            if not complete and record.status < 400:
                record.status = CLIENT_CLOSED
            record.key = record.key or state.get("api_key")
            if error_body and record.error_code is None:
                record.error_code = _error_code(bytes(error_body))
            if not (record.deferred and record.status < 400):
                report(self.observers, record)

        async def recording_send(message: Message) -> None:
            nonlocal complete, held
            if message["type"] == "http.response.start":
                record.status = message["status"]
                if not _is_stream(message):
                    held = message  # may get a header on how its usage was recorded
                    return
            elif message["type"] == "http.response.body":
                body = message.get("body", b"")
                if body and record.first_byte is None:
                    record.first_byte = time.monotonic()
                if record.status >= 400 and len(error_body) < _ERROR_BODY_MAX:
                    error_body.extend(body)
                # A stream's end is its ``[DONE]`` event (clients stop reading there), the
                # rest's their last bytes.
                complete = not message.get("more_body", False) or body.endswith(DONE)
                if complete and not reported:
                    # The observers hear of the request, and what they start for it lands,
                    # before its client sees the end: the client's next request is admitted
                    # against what this one used (a token budget spent by this response
                    # refuses the very next request, whichever ingress replica it reaches).
                    finish()
                    if not await settle(record):
                        if held is not None:
                            held = {**held, "headers": [*held["headers"], UNRECORDED_HEADER]}
                        else:
                            message = {**message, "body": UNRECORDED_COMMENT + body}
                if held is not None:
                    await send(held)
                    held = None
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        except Exception:  # not a cancellation: that is the client going away (below)
            record.status = record.status if complete else 500
            raise
        finally:
            if not reported:
                finish()


def _is_stream(start: Message) -> bool:
    return any(
        name == b"content-type" and value.startswith(b"text/event-stream")
        for name, value in start.get("headers", ())
    )


async def settle(record: Finished) -> bool:
    """Wait (up to ``SETTLE_TIMEOUT_S``) for what the observers started for ``record``; True
    if all of it landed."""
    if not record.settling:
        return True
    try:  # shielded: a client that leaves now does not cancel its charge
        done = asyncio.gather(*record.settling)
        landed = all(await asyncio.wait_for(asyncio.shield(done), SETTLE_TIMEOUT_S))
    except Exception:  # still under way: it may land later (``deliver`` keeps trying)
        landed = False
    if not landed:
        logger.warning("usage not recorded [request_id=%s]", record.request_id)
    return landed


def report(observers: list[Observer], record: Finished) -> None:
    """Tell every observer that ``record``'s request has ended."""
    for observer in observers:
        try:
            observer.finished(record)
        except Exception:
            logger.exception("observer failed [request_id=%s]", record.request_id)


def _error_code(body: bytes) -> str | None:
    try:
        code = json.loads(body)["error"]["code"]
    except (ValueError, KeyError, TypeError):
        return None
    return code if isinstance(code, str) else None


def registry(request: Request) -> ModelRegistry:
    return request.app.state.registry


async def admit(
    request: Request, model: ServedModel, key: APIKey | None, budgets: tuple[str, ...] = ()
) -> Finished:
    """403 if the key may not use ``model``; 429 if it is over a rate limit. Returns the
    request's record, which the rest of the pipeline fills in."""
    record: Finished = request.state.record
    record.request_id, record.model, record.key = request_id_of(request), model.id, key
    authorize_model(key, model.id, model.aliases)
    usage = (model.family.usage,) if model.family.usage else ()
    await request.app.state.rate_limits.admit(key, (*usage, *budgets))
    record.admitted = True
    for observer in request.app.state.observers:
        observer.admitted(record)
    return record


async def run_backend(
    request: Request,
    model: ServedModel,
    record: Finished,
    stream: bool,
    call: Callable[[], Any],
    through: tuple[Any, ...] = (),
) -> Response:
    """Make ``call()`` (a streaming handle call) and answer with its frames.

    The first frame must come within the stream TTFT limit (streams) or the request timeout
    (everything else). Usage and errors inside a stream go into ``record``. ``through``: the
    handles of other deployments the call passes on its way to the model's (the audio pool).
    """
    limits = request.app.state.registry.config.limits
    record.stream = stream
    logger.info(
        "%s model=%s key=%s [request_id=%s]",
        record.route,
        record.model,
        record.key.name if record.key else "-",
        record.request_id,
    )
    return await frames_to_response(
        call,
        record.request_id,
        timeout_s=limits.stream_ttft_timeout_s if stream else limits.request_timeout_s,
        retry_after_s=limits.retry_after_s,
        needs=(*through, model.handle),
        on_usage=record.add_usage,
        on_error=record.failed,
    )
