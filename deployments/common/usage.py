"""Charging work that was cut short, from the model replica that did it.

A request's usage normally reaches the ingress in its last frame, and the ingress charges it
(``serve_app/ratelimit.py``). When the call ends before that frame (the client went away,
the request timed out or was cancelled, or the engine failed), the ingress never sees the
counts; the replica does. ``metered`` wraps a replica's frames and, in that case, charges
what the engine counted to the rate limiter itself, with the ``Account`` the ingress sent.
``deliver`` is how the ingress and the replicas hand a charge to the limiter.
"""

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from ray import serve

from deployments.common.contracts import Charge, Frame, JSONFrame, TextFrame, Usage, UsageFrame
from deployments.common.tasks import detached

logger = logging.getLogger("ray.serve.deployments.usage")

DELIVER_S = 60.0  # a charge is offered this long to a limiter that died (Serve restarts it)
RETRY_S = 1.0


@dataclass(slots=True)
class Account:
    """Whom a request's usage is charged to, and where the charges go."""

    key: str  # the API key's name ("" when the API runs without keys)
    kind: str  # the Usage API's endpoint kind
    route: str
    limiter: tuple[str, str]  # (deployment, application) of the rate limiter
    batch: bool = False
    request_id: str = ""

    def charge(
        self, model: str, usage: Usage, ended: str, estimated: bool = False, cut: bool = False
    ) -> Charge:
        """``cut``: the charge of a call cut short, from the model replica (the ingress's
        charge of the same request, if any, is another)."""
        return Charge(
            key=self.key,
            model=model,
            kind=self.kind,
            route=self.route,
            id=f"{self.request_id}/cut" if cut and self.request_id else self.request_id,
            input_tokens=int(usage.get("prompt_tokens", 0)),
            output_tokens=int(usage.get("completion_tokens", 0)),
            cached_tokens=int(usage.get("cached_tokens", 0)),
            reasoning_tokens=int(usage.get("reasoning_tokens", 0)),
            audio_seconds=float(usage.get("audio_seconds", 0.0)),
            ended=ended,
            estimated=estimated,
            batch=self.batch,
        )


async def metered(
    frames: AsyncIterator[Frame],
    account: Account | None,
    model: str,
    used: Callable[[], Usage],
    estimated: bool = False,
) -> AsyncIterator[Frame]:
    """``frames`` as they come; if they end before a frame that carries the request's usage,
    charge ``used()`` (what the engine counted so far; a guess if ``estimated``) to
    ``account``."""
    settled = account is None
    ended = "cancelled"
    try:
        async for frame in frames:
            if isinstance(frame, UsageFrame | JSONFrame | TextFrame):
                settled = True
            yield frame
    except (asyncio.CancelledError, GeneratorExit):
        raise
    except BaseException:
        ended = "failed"
        raise
    finally:
        if not settled and (usage := used()):
            _charge(account, account.charge(model, usage, ended, estimated, cut=True))


def _charge(account: Account, charge: Charge) -> None:
    try:
        charging(serve.get_deployment_handle(*account.limiter), charge)
    except Exception:
        logger.exception("could not charge %s's cut-short usage %s", account.key, charge)


def charging(handle: Any, charge: Charge) -> asyncio.Task:
    """``deliver``, detached from the request: a charge must go through."""
    return detached(deliver(handle, charge))


async def deliver(handle: Any, charge: Charge) -> bool:
    """Charge ``charge`` through the limiter's ``handle``; True once the ledger has it (False:
    the store refused it, and the limiter keeps it to write again). A call the limiter
    could not answer (it died: Serve starts another) is made again, for up to ``DELIVER_S``;
    a charge still not taken then is logged whole, to be reconciled by hand. One that a
    limiter committed before it died, unanswered, is sent again: the ledger adds it once
    (``Charge.id``)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DELIVER_S
    while True:
        try:
            return bool(await handle.charge.remote([charge]))
        except Exception:
            if loop.time() >= deadline:
                logger.exception("usage not charged (the rate limiter is unreachable): %s", charge)
                return False
            await asyncio.sleep(RETRY_S)
