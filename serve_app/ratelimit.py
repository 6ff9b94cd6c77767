"""Per-key limits and budgets, and the writer of the usage ledger (the ingress side, which
admits and charges through it: ``serve_app/admission.py``).

One small ``RateLimiter`` deployment (one replica, no CPU reserved) holds every key's
counters, so limits hold across any number of ingress replicas:

- a sliding minute of requests, tokens and audio seconds (``*_per_minute``: 429
  ``rate_limit_exceeded`` with ``Retry-After``);
- the UTC calendar day and month of tokens and audio seconds (``*_per_day``,
  ``*_per_month``: 429 ``insufficient_quota`` until the period ends).

Requests are counted when admitted; usage when it is charged (``charge``): by the ingress
when a response ends (before its last bytes), by a model replica when its work was cut
short (``deployments/common/usage.py``). A charge is committed to the ledger in the store
(``serve_app/store/ledger.py``) before ``charge`` returns; concurrent charges share one
transaction. A charge the store does not take is kept and written again every
``RETRY_S`` until it does (it counts against the budgets meanwhile). After a restart the
counters come back from the ledger before anything is admitted, so a restart, a redeploy or a
``kill -9`` of this replica forgets no budget. The token and audio counters of Prometheus
are counted here too, from the same charges, so the ledger and the metrics agree.

Leases spare most requests the round trip of ``admit``. With an admission the limiter grants
the asking ingress replica a lease on the key: up to ``LEASE_MAX`` more requests, for
``LEASE_S``, with a share (``1/LEASE_SHARE``) of what is left of each minute, day and month
budget. The ingress admits those requests itself while the usage it charges for the key stays
within the lease's share. The leased requests count in the key's minute at once (the unused
ones are given back with the next ask), and the budget shares of the leases out are kept
from later leases. So a lease admits nothing the limiter would refuse, save what other
ingress replicas or model replicas (work cut short) charge for the key while it runs: at
most ``LEASE_S`` of it. A key close to its requests per minute (less than ``LEASE_SHARE``
left) gets no lease: every request asks.
"""

import asyncio
import dataclasses
import logging
import math
import time
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from deployments.common.contracts import Charge
from serve_app.log import LOGGER
from serve_app.metrics import UsageMetrics
from serve_app.store import HandleStore

logger = logging.getLogger(LOGGER)

WINDOW_S = 60.0
RETRY_S = 1.0  # charges the store refused are written again this often
LEASE_S = 2.0  # an admission's lease: the ingress admits the key's next requests this long,
LEASE_MAX = 32  # at most this many,
LEASE_SHARE = 4  # with at most this fraction (1/n) of what is left of each limit
# Budget kind -> the limits that spend it, by period.
BUDGETS = {
    "tokens": {
        "minute": "tokens_per_minute",
        "day": "tokens_per_day",
        "month": "tokens_per_month",
    },
    "audio": {
        "minute": "audio_seconds_per_minute",
        "day": "audio_seconds_per_day",
        "month": "audio_seconds_per_month",
    },
}


class _Window:
    """A sliding window of (time, amount) events with a running total."""

    __slots__ = ("events", "total")

    def __init__(self) -> None:
        self.events: deque[list[float]] = deque()  # [time, amount]
        self.total = 0.0

    def expire(self, now: float) -> None:
        while self.events and self.events[0][0] <= now - WINDOW_S:
            self.total -= self.events.popleft()[1]

    def add(self, now: float, amount: float) -> list[float]:
        event = [now, amount]
        self.events.append(event)
        self.total += amount
        return event

    def give_back(self, event: list[float], amount: float, now: float) -> None:
        """Take up to ``amount`` off ``event``, if it is still in the window."""
        if event[0] > now - WINDOW_S:
            amount = min(amount, event[1])
            event[1] -= amount
            self.total -= amount

    def retry_after(self, now: float, limit: float) -> float:
        """Seconds until the total drops below ``limit``."""
        total = self.total
        for stamp, amount in self.events:
            total -= amount
            if total < limit:
                return max(stamp + WINDOW_S - now, 0.001)
        return WINDOW_S


def period_start(period: str, now: float) -> int:
    """Unix time the UTC ``day`` or ``month`` holding ``now`` began."""
    moment = datetime.fromtimestamp(now, UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "month":
        moment = moment.replace(day=1)
    return int(moment.timestamp())


def period_end(period: str, now: float) -> int:
    """Unix time the UTC ``day`` or ``month`` holding ``now`` ends."""
    start = datetime.fromtimestamp(period_start(period, now), UTC)
    if period == "day":
        return int(start.timestamp()) + 86400
    month = start.replace(year=start.year + start.month // 12, month=start.month % 12 + 1)
    return int(month.timestamp())


class _Period:
    """A key's usage of one kind in the current UTC day or month."""

    __slots__ = ("start", "total")

    def __init__(self, start: int, total: float = 0.0) -> None:
        self.start, self.total = start, total


def amounts(charge: Charge) -> dict[str, float]:
    """What a charge spends of each budget kind."""
    return {"tokens": float(charge.tokens), "audio": charge.audio_seconds}


@dataclass(slots=True)
class Lease:
    """What an ingress replica may admit for a key by itself (see the module's docstring)."""

    requests: int
    headroom: dict[str, float]  # budget kind -> usage it may charge meanwhile (absent: any)
    seconds: float


@dataclass(slots=True)
class _Grant:
    """A lease out, as the limiter keeps it."""

    expires: float
    requests: list[float]  # its event in the key's minute of requests
    headroom: dict[str, float]


class RateLimiter:
    """Every key's counters, and the ledger's writer. Deploy with exactly one replica."""

    def __init__(self, store: Any, clock: Any = time.time) -> None:
        self.ledger = HandleStore(store)
        self.clock = clock
        self.metrics = UsageMetrics()
        self._windows: dict[tuple[str, str], _Window] = {}
        self._periods: dict[tuple[str, str, str], _Period] = {}
        self._grants: dict[str, dict[str, _Grant]] = {}  # key -> holder -> its lease
        self._restored: asyncio.Task | None = None
        self._pending: list[tuple[list[Charge], asyncio.Future]] = []
        self._writer: asyncio.Task | None = None
        self._unwritten: list[Charge] = []  # refused by the store: written again later

    async def _restore(self) -> None:
        """Load the counters from the ledger, once (a failed load is tried again on the next
        call: until it succeeds, nothing is admitted against a budget)."""
        if self._restored is None or (self._restored.done() and self._restored.exception()):
            self._restored = asyncio.ensure_future(self._load())
        await asyncio.shield(self._restored)

    async def _load(self) -> None:
        now = self.clock()
        minute = int(now - WINDOW_S) // 60 * 60
        windows: dict[tuple[str, str], _Window] = {}
        periods: dict[tuple[str, str, str], _Period] = {}
        for key, requests, tokens, audio in await self.ledger.usage_totals(minute):
            for kind, total in (("requests", requests), ("tokens", tokens), ("audio", audio)):
                windows.setdefault((key, kind), _Window()).add(now, total)  # as if just now
        for period in ("day", "month"):
            start = period_start(period, now)
            for key, _, tokens, audio in await self.ledger.usage_totals(start):
                for kind, total in (("tokens", tokens), ("audio", audio)):
                    periods[(key, kind, period)] = _Period(start, total)
        self._windows, self._periods = windows, periods
        keys = {key for key, _ in windows} | {key for key, _, _ in periods}
        logger.info("rate limiter: counters of %d keys loaded from the ledger", len(keys))

    def _window(self, key: str, kind: str, now: float) -> _Window:
        window = self._windows.setdefault((key, kind), _Window())
        window.expire(now)
        return window

    def _period(self, key: str, kind: str, period: str, now: float) -> _Period:
        start = period_start(period, now)
        found = self._periods.get((key, kind, period))
        if found is None or found.start != start:
            found = self._periods[(key, kind, period)] = _Period(start)
        return found

    async def admit(
        self,
        key: str,
        limits: dict[str, Any],
        kinds: tuple[str, ...] = (),
        holder: str = "",
        unused: int = 0,
    ) -> Lease | tuple[float, str] | None:
        """Count one request: admitted (None, or a ``Lease`` for ``holder``, an ingress
        replica), else ``(seconds to wait, error code)``.

        ``kinds`` (``tokens``, ``audio``) name the usage budgets that also need room. A spent
        day or month budget is ``insufficient_quota`` (until the period ends); a full minute
        ``rate_limit_exceeded``. ``unused``: the requests ``holder``'s last lease on ``key``
        did not admit (given back).
        """
        await self._restore()
        now = self.clock()
        grant = self._grants.get(key, {}).pop(holder, None)
        if grant is not None and unused > 0:
            self._window(key, "requests", now).give_back(grant.requests, unused, now)
        for kind in kinds:
            for period in ("month", "day"):
                budget = limits.get(BUDGETS[kind][period])
                if budget is not None and self._period(key, kind, period, now).total >= budget:
                    return period_end(period, now) - now, "insufficient_quota"
        rpm = limits.get("requests_per_minute")
        requests = self._window(key, "requests", now)
        waits = []
        if rpm is not None and requests.total >= rpm:
            waits.append(requests.retry_after(now, rpm))
        for kind in kinds:
            budget = limits.get(BUDGETS[kind]["minute"])
            if budget is None:
                continue
            usage = self._window(key, kind, now)
            if usage.total >= budget:
                waits.append(usage.retry_after(now, budget))
        if waits:
            return max(waits), "rate_limit_exceeded"
        requests.add(now, 1)
        return self._lease(key, limits, holder, now) if holder else None

    def _lease(self, key: str, limits: dict[str, Any], holder: str, now: float) -> Lease | None:
        """A lease for ``holder`` on ``key``, if the key is far enough from every limit."""
        grants = self._grants.setdefault(key, {})
        for other, grant in list(grants.items()):
            if grant.expires <= now:
                del grants[other]
        headroom = {}
        for kind, names in BUDGETS.items():
            left = math.inf
            for period, name in names.items():
                budget = limits.get(name)
                if budget is not None:
                    used = (
                        self._window(key, kind, now).total
                        if period == "minute"
                        else self._period(key, kind, period, now).total
                    )
                    left = min(left, budget - used)
            if left < math.inf:
                left -= sum(grant.headroom.get(kind, 0.0) for grant in grants.values())
                if left <= 0:
                    return None
                headroom[kind] = left / LEASE_SHARE
        count = LEASE_MAX
        rpm = limits.get("requests_per_minute")
        if rpm is not None:
            count = min(count, int(rpm - self._window(key, "requests", now).total) // LEASE_SHARE)
        if count <= 0:
            return None
        event = self._window(key, "requests", now).add(now, count)
        grants[holder] = _Grant(now + LEASE_S, event, headroom)
        return Lease(count, headroom, LEASE_S)

    async def charge(self, charges: list[Charge]) -> bool:
        """Charge usage to its keys' budgets and write it to the ledger; True once committed
        (False: the store refused it; it is kept and written again later).

        The budgets count a charge at once; Prometheus once the ledger has added it (a charge
        sent again, by an ingress whose limiter died before answering, is added once).
        """
        await self._restore()
        now = self.clock()
        for charge in charges:
            charge.at = now
            for kind, amount in amounts(charge).items():
                if amount > 0:
                    self._window(charge.key, kind, now).add(now, amount)
                    for period in ("day", "month"):
                        self._period(charge.key, kind, period, now).total += amount
        done = asyncio.get_running_loop().create_future()
        self._pending.append((charges, done))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.ensure_future(self._write())
        return await asyncio.shield(done)

    async def _write(self) -> None:
        """Commit pending charges, all that have come in since the last commit in one
        transaction, until none is left; then the ones the store refused, every ``RETRY_S``."""
        while self._pending or self._unwritten:
            batch, self._pending = self._pending, []
            charges = self._unwritten + [charge for part, _ in batch for charge in part]
            try:
                added = await self.ledger.add_usage([dataclasses.asdict(c) for c in charges])
                self._unwritten, committed = [], True
            except Exception:
                fresh = charges[len(self._unwritten) :]  # the others were logged already
                logger.exception("usage ledger: %d charges held, retrying: %s", len(charges), fresh)
                self._unwritten, committed = charges, False
            else:
                for charge, new in zip(charges, added, strict=True):
                    if new:
                        self.metrics.count(charge)
            for _, done in batch:
                if not done.done():
                    done.set_result(committed)
            if not committed:
                await asyncio.sleep(RETRY_S)

    async def check_health(self) -> None:
        """Healthy while the ledger's charges get written (a backlog is retried)."""
