"""The ingress side of the rate limits: admit each request (under a lease on its key when the
limiter lent one, else by asking the limiter) and charge what it used.

The limiter deployment, its counters, budgets and leases are ``serve_app/ratelimit.py``.
"""

import asyncio
import logging
import math
import time
import uuid
from typing import Any

from deployments.common.usage import Account, charging
from serve_app.auth import APIKey
from serve_app.errors import APIError
from serve_app.log import LOGGER
from serve_app.pipeline import CLIENT_CLOSED
from serve_app.ratelimit import Lease, amounts

logger = logging.getLogger(LOGGER)


class _Held:
    """A lease an ingress replica holds on a key."""

    __slots__ = ("expires", "headroom", "limits", "requests")

    def __init__(self, lease: Lease, limits: dict[str, Any], asked: float) -> None:
        self.requests, self.headroom, self.limits = lease.requests, lease.headroom, limits
        self.expires = asked + lease.seconds

    def take(self, limits: dict[str, Any], kinds: tuple[str, ...]) -> bool:
        """Admit one request under the lease, if it still covers it."""
        if self.requests <= 0 or limits != self.limits or time.monotonic() >= self.expires:
            return False
        if any(self.headroom.get(kind, 1.0) <= 0 for kind in kinds):
            return False
        self.requests -= 1
        return True


class RateLimits:
    """The ingress side: admit requests and charge usage through the limiter's handle."""

    def __init__(self, handle: Any) -> None:
        self.handle = handle
        self.holder = uuid.uuid4().hex  # this replica, to the limiter's leases
        self._leases: dict[str, _Held] = {}  # key name -> the lease this replica holds
        self._asking: dict[str, asyncio.Future] = {}  # key name -> the limiter's answer to come

    async def admit(self, key: APIKey | None, kinds: tuple[str, ...] = ()) -> None:
        """429 when the key is over a limit: ``rate_limit_exceeded`` with ``Retry-After``,
        or ``insufficient_quota`` when a day or month budget is spent.

        Under a lease on the key, admitted here; else the limiter is asked, by one request
        of the key at a time (the others wait for its answer: a lease, likely)."""
        if key is None or not key.limits.any or self.handle is None:
            return
        limits = key.limits.model_dump()
        while True:
            held = self._leases.get(key.name)
            if held is not None and held.take(limits, kinds):
                return
            asking = self._asking.get(key.name)
            if asking is None:
                break
            await asyncio.wait([asking])
        self._leases.pop(key.name, None)
        unused = held.requests if held is not None else 0
        asked = time.monotonic()
        answer = self._asking[key.name] = asyncio.get_running_loop().create_future()
        try:
            refused = await self.handle.admit.remote(key.name, limits, kinds, self.holder, unused)
        except Exception:
            logger.exception("rate limiter unavailable")
            raise APIError(
                503,
                "The rate limiter is unavailable. Please retry.",
                code="unavailable",
                headers={"Retry-After": "1"},
            ) from None
        finally:
            del self._asking[key.name]
            answer.set_result(None)
        if isinstance(refused, Lease):
            self._leases[key.name] = _Held(refused, limits, asked)
            return
        if refused is None:
            return
        wait, code = refused
        seconds = math.ceil(wait)
        if code == "insufficient_quota":
            message = (
                f"You exceeded your current quota: API key '{key.name}' has spent a daily or "
                f"monthly budget. It renews in {seconds}s (at the start of the next UTC day "
                "or month)."
            )
        else:
            message = (
                f"Rate limit reached for API key '{key.name}'. Please try again in {seconds}s."
            )
        raise APIError(429, message, code=code, headers={"Retry-After": str(seconds)})

    def account(self, record: Any) -> Account | None:
        """Whom ``record``'s request is charged to, for a replica that charges work cut short
        (None without a limiter: unit tests of the routes)."""
        return record.account(self.handle) if self.handle is not None else None

    def admitted(self, record: Any) -> None:
        """Pipeline observer: nothing to do (``admit`` above already counted the request)."""

    def finished(self, record: Any) -> None:
        """Pipeline observer: charge a finished request's usage (the pipeline awaits the call
        before the response ends: ``Finished.settling``), and take it off the key's lease.
        A request that may have been cut short (its replica charges it) ends the lease."""
        if self.handle is None:
            return
        charge = record.charge(self.handle)
        if charge is not None:
            record.settling.append(charging(self.handle, charge))
        held = self._leases.get(record.key.name) if record.key is not None else None
        if held is None:
            return
        if record.lost or record.status >= 500 or record.status == CLIENT_CLOSED:
            del self._leases[record.key.name]
        elif charge is not None:
            for kind, amount in amounts(charge).items():
                if kind in held.headroom:
                    held.headroom[kind] -= amount
