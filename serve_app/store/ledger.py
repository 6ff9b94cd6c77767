"""The usage ledger's table and queries (part of the store: SQLite or PostgreSQL).

One row per UTC minute, key name, model, endpoint kind, batch flag and estimate flag, with
the requests and counts charged in that minute. A charge adds to its row in the same
statement (an upsert), so concurrent writers (every store replica of a PostgreSQL cluster)
never lose each other's counts, and a charge is committed when ``add_usage`` returns.
Rows older than the store's ``usage_retention_days`` are deleted by the hourly cleanup.

A charge is added once: its id (the request's, see ``Charge.id``) goes into
``usage_charges`` in the same transaction, and a charge whose id is there already adds
nothing. So a charge sent again (its limiter died after the commit, before its answer) is
not counted twice. Ids are kept a day (a charge is retried for a minute at most).
"""

import uuid
from collections.abc import Sequence
from typing import Any

MIGRATION = [
    """CREATE TABLE IF NOT EXISTS usage_minutes (
        minute BIGINT NOT NULL,
        api_key TEXT NOT NULL,
        model TEXT NOT NULL,
        kind TEXT NOT NULL,
        batch INTEGER NOT NULL,
        estimated INTEGER NOT NULL,
        requests BIGINT NOT NULL,
        input_tokens BIGINT NOT NULL,
        output_tokens BIGINT NOT NULL,
        cached_tokens BIGINT NOT NULL,
        audio_seconds DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (minute, api_key, model, kind, batch, estimated)
    )""",
    "CREATE INDEX IF NOT EXISTS usage_minutes_key ON usage_minutes (api_key, minute)",
    """CREATE TABLE IF NOT EXISTS usage_charges (
        id TEXT PRIMARY KEY,
        charged_at BIGINT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS usage_charges_at ON usage_charges (charged_at)",
]
COUNTS = ("requests", "input_tokens", "output_tokens", "cached_tokens", "audio_seconds")
_TYPES = ("BIGINT", "TEXT", "TEXT", "TEXT", "INTEGER", "INTEGER")
_TYPES += ("BIGINT",) * 4 + ("DOUBLE PRECISION",)
# The upsert of a charge whose id is not in ``usage_charges`` (typed: PostgreSQL does not
# infer a SELECT list's parameter types from the columns they go into).
ADD = f"""INSERT INTO usage_minutes
    (minute, api_key, model, kind, batch, estimated, {", ".join(COUNTS)})
    SELECT {", ".join(f"CAST(%s AS {type_})" for type_ in _TYPES)}
    WHERE NOT EXISTS (SELECT 1 FROM usage_charges WHERE id = %s)
    ON CONFLICT (minute, api_key, model, kind, batch, estimated) DO UPDATE SET
    {", ".join(f"{name} = usage_minutes.{name} + excluded.{name}" for name in COUNTS)}"""
NOTED = "INSERT INTO usage_charges (id, charged_at) VALUES (%s, %s) ON CONFLICT (id) DO NOTHING"
IDS_KEPT_S = 86400
# What the rate limiter's budgets count, per key, since a time.
TOTALS = """SELECT api_key, SUM(requests), SUM(input_tokens + output_tokens), SUM(audio_seconds)
    FROM usage_minutes WHERE minute >= %s GROUP BY api_key"""
GROUPS = ("api_key", "model", "batch")  # what the Usage API can group by here
EXPIRED = "DELETE FROM usage_minutes WHERE minute < %s"
EXPIRED_IDS = "DELETE FROM usage_charges WHERE charged_at < %s"


def add_statements(charges: Sequence[dict[str, Any]]) -> list[tuple[str, tuple]]:
    """Two statements per charge (``deployments.common.contracts.Charge`` as a dict): its
    upsert, unless its id was charged already, then its id."""
    statements = []
    for charge in charges:
        id_ = charge["id"] or uuid.uuid4().hex
        values = (
            int(charge["at"]) // 60 * 60,
            charge["key"],
            charge["model"],
            charge["kind"],
            int(charge["batch"]),
            int(charge["estimated"]),
            1,  # a charge is one request
            int(charge["input_tokens"]),
            int(charge["output_tokens"]),
            int(charge["cached_tokens"]),
            float(charge["audio_seconds"]),
        )
        statements += [(ADD, (*values, id_)), (NOTED, (id_, int(charge["at"])))]
    return statements


def buckets_query(
    kind: str,
    start: int,
    end: int,
    width: int,
    group_by: Sequence[str],
    keys: Sequence[str],
    models: Sequence[str],
    batch: bool | None,
) -> tuple[str, tuple]:
    """The sums of ``kind``'s rows in ``[start, end)`` per bucket (``width`` seconds from
    ``start``) and per ``group_by`` columns (of ``GROUPS``), bucket by bucket."""
    groups = [column for column in GROUPS if column in group_by]
    where = ["kind = %s", "minute >= %s", "minute < %s"]
    params: list[Any] = [kind, start, end]
    for column, values in (("api_key", keys), ("model", models)):
        if values:
            where.append(f"{column} IN ({', '.join(['%s'] * len(values))})")
            params += values
    if batch is not None:
        where.append("batch = %s")
        params.append(int(batch))
    bucket = f"(%s + (minute - %s) / {int(width)} * {int(width)})"
    columns = ", ".join([bucket, *groups, *(f"SUM({name})" for name in COUNTS)])
    grouping = ", ".join(["1", *(str(i + 2) for i in range(len(groups)))])
    sql = f"""SELECT {columns} FROM usage_minutes WHERE {" AND ".join(where)}
        GROUP BY {grouping} ORDER BY {grouping}"""
    return sql, (start, start, *params)


class UsageLedger:
    """The ledger's operations, part of the store (``SQLStore``, which gives ``_query`` and
    ``_transaction``)."""

    async def _query(self, sql: str, params: tuple) -> list[tuple]:
        raise NotImplementedError

    async def _transaction(self, statements: list[tuple[str, tuple]]) -> list[int]:
        raise NotImplementedError

    async def add_usage(self, charges: list[dict[str, Any]]) -> list[bool]:
        """Add charges to the ledger, committed when this returns; for each, whether it was
        added (False: its id was charged already)."""
        counts = await self._transaction(add_statements(charges))
        return [count > 0 for count in counts[::2]]

    async def usage_totals(self, since: int) -> list[tuple[str, float, float, float]]:
        """``(key, requests, tokens, audio seconds)`` per key, in the minutes from ``since``
        on: what the rate limiter counts, read back after a restart."""
        rows = await self._query(TOTALS, (since,))
        return [(key, float(n), float(tokens), float(audio)) for key, n, tokens, audio in rows]

    async def usage_buckets(
        self,
        kind: str,
        start: int,
        end: int,
        width: int,
        group_by: Sequence[str] = (),
        keys: Sequence[str] = (),
        models: Sequence[str] = (),
        batch: bool | None = None,
    ) -> list[dict[str, Any]]:
        """The ledger's sums for the Usage API: one dict per bucket start and group (the
        ``group_by`` columns of ``GROUPS``, then ``COUNTS``), in order."""
        sql, params = buckets_query(kind, start, end, width, group_by, keys, models, batch)
        groups = [column for column in GROUPS if column in group_by]
        rows = []
        for row in await self._query(sql, params):
            found: dict[str, Any] = {"bucket": int(row[0])}
            found.update(zip(groups, row[1 : 1 + len(groups)], strict=True))
            counts = row[1 + len(groups) :]
            for name, value in zip(COUNTS, counts, strict=True):
                found[name] = float(value) if name == "audio_seconds" else int(value)
            rows.append(found)
        return rows
