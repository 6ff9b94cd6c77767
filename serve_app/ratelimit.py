"""Per-key rate limits shared by every ingress replica.

Counters live in one small ``RateLimiter`` deployment (one replica, no CPU reserved), so
limits hold across any number of ingress replicas. Requests are admitted against a sliding
one-minute window; tokens and audio seconds are recorded when a response completes, so a
key over its budget is refused from its next request on.
"""

import math
import time
from collections import deque
from typing import Any

from serve_app.auth import APIKey
from serve_app.errors import APIError

WINDOW_S = 60.0
KINDS = {"tokens": "tokens_per_minute", "audio": "audio_seconds_per_minute"}


class _Window:
    """A sliding window of (time, amount) events with a running total."""

    __slots__ = ("events", "total")

    def __init__(self) -> None:
        self.events: deque[tuple[float, float]] = deque()
        self.total = 0.0

    def expire(self, now: float) -> None:
        while self.events and self.events[0][0] <= now - WINDOW_S:
            self.total -= self.events.popleft()[1]

    def add(self, now: float, amount: float) -> None:
        self.events.append((now, amount))
        self.total += amount

    def retry_after(self, now: float, limit: float) -> float:
        """Seconds until the total drops below ``limit``."""
        total = self.total
        for stamp, amount in self.events:
            total -= amount
            if total < limit:
                return max(stamp + WINDOW_S - now, 0.001)
        return WINDOW_S


class RateLimiter:
    """Sliding-minute counters per key name. Deploy with exactly one replica."""

    def __init__(self) -> None:
        self._windows: dict[tuple[str, str], _Window] = {}

    def _window(self, key: str, kind: str, now: float) -> _Window:
        window = self._windows.setdefault((key, kind), _Window())
        window.expire(now)
        return window

    def admit(self, key: str, limits: dict[str, Any], kinds: tuple[str, ...] = ()) -> float | None:
        """Count one request; return None if admitted, else seconds to wait.

        ``kinds`` (``tokens``, ``audio``) name the usage budgets that also have to have room.
        """
        now = time.monotonic()
        rpm = limits.get("requests_per_minute")
        requests = self._window(key, "requests", now)
        waits = []
        if rpm is not None and requests.total >= rpm:
            waits.append(requests.retry_after(now, rpm))
        for kind in kinds:
            budget = limits.get(KINDS[kind])
            if budget is None:
                continue
            usage = self._window(key, kind, now)
            if usage.total >= budget:
                waits.append(usage.retry_after(now, budget))
        if waits:
            return max(waits)
        requests.add(now, 1)
        return None

    def record(self, key: str, kind: str, amount: float) -> None:
        """Add completed usage (tokens or audio seconds) to the key's window."""
        if amount > 0:
            now = time.monotonic()
            self._window(key, kind, now).add(now, amount)

    async def check_health(self) -> None:
        """In-memory counters: nothing to check."""


class RateLimits:
    """The ingress side: admit requests and record usage through the limiter's handle."""

    def __init__(self, handle: Any) -> None:
        self.handle = handle

    async def admit(self, key: APIKey | None, kinds: tuple[str, ...] = ()) -> None:
        """429 ``rate_limit_exceeded`` with ``Retry-After`` when the key is over a limit."""
        if key is None or not key.limits.any or self.handle is None:
            return
        wait = await self.handle.admit.remote(key.name, key.limits.model_dump(), kinds)
        if wait is not None:
            seconds = math.ceil(wait)
            raise APIError(
                429,
                f"Rate limit reached for API key '{key.name}'. Please try again in {seconds}s.",
                code="rate_limit_exceeded",
                headers={"Retry-After": str(seconds)},
            )

    def admitted(self, record: Any) -> None:
        """Pipeline observer: nothing to do (``admit`` above already counted the request)."""

    def finished(self, record: Any) -> None:
        """Pipeline observer: charge a finished request's usage to its key's budgets (the
        pipeline awaits the calls before the response ends: ``Finished.settling``)."""
        key = record.key
        if key is None or self.handle is None:
            return
        for kind, amount in record.charges().items():
            if getattr(key.limits, KINDS[kind]) is not None:
                record.settling.append(self.handle.record.remote(key.name, kind, amount))
