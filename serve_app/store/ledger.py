"""The usage ledger's table and queries (part of the store: SQLite or PostgreSQL).

One row per UTC minute, key name, model, endpoint kind, batch flag and estimate flag, with
the requests and counts charged in that minute. A charge adds to its row in the same
statement (an upsert), so concurrent writers (every store replica of a PostgreSQL cluster)
never lose each other's counts, and a charge is committed when ``add_usage`` returns.
Rows older than the store's ``usage_retention_days`` are deleted by the hourly cleanup.
"""

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
]
COUNTS = ("requests", "input_tokens", "output_tokens", "cached_tokens", "audio_seconds")
ADD = f"""INSERT INTO usage_minutes
    (minute, api_key, model, kind, batch, estimated, {", ".join(COUNTS)})
    VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
    ON CONFLICT (minute, api_key, model, kind, batch, estimated) DO UPDATE SET
    {", ".join(f"{name} = usage_minutes.{name} + excluded.{name}" for name in COUNTS)}"""
# What the rate limiter's budgets count, per key, since a time.
TOTALS = """SELECT api_key, SUM(requests), SUM(input_tokens + output_tokens), SUM(audio_seconds)
    FROM usage_minutes WHERE minute >= %s GROUP BY api_key"""
GROUPS = ("api_key", "model", "batch")  # what the Usage API can group by here
EXPIRED = "DELETE FROM usage_minutes WHERE minute < %s"


def add_statements(charges: Sequence[dict[str, Any]]) -> list[tuple[str, tuple]]:
    """The upserts of ``charges`` (``deployments.common.contracts.Charge`` as dicts)."""
    return [
        (
            ADD,
            (
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
            ),
        )
        for charge in charges
    ]


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
