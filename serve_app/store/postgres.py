"""The cluster store: a PostgreSQL server shared by every store replica (psycopg 3, a pool).

The schema is brought up to date at start under an advisory lock, so replicas starting
together migrate once.
"""

from psycopg_pool import AsyncConnectionPool

from serve_app.store.sql import MIGRATIONS, SQLStore

_MIGRATION_LOCK = 7_220_021  # pg_advisory_xact_lock key: one migrating replica at a time


class PostgresStore(SQLStore):
    def __init__(
        self,
        dsn: str,
        retention_s: float,
        usage_retention_s: float = 400 * 86400,
        pool_size: int = 8,
    ) -> None:
        super().__init__(retention_s, usage_retention_s)
        self.pool = AsyncConnectionPool(dsn, min_size=1, max_size=pool_size, open=False)

    async def start(self) -> None:
        await self.pool.open(wait=True, timeout=30)
        async with self.pool.connection() as db, db.transaction():
            await db.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
            await db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER)")
            row = await (await db.execute("SELECT version FROM schema_version")).fetchone()
            version = row[0] if row else 0
            for migration in MIGRATIONS[version:]:
                for statement in migration:
                    await db.execute(statement)
            await db.execute("DELETE FROM schema_version")
            await db.execute("INSERT INTO schema_version VALUES (%s)", (len(MIGRATIONS),))

    async def close(self) -> None:
        await self.pool.close()

    async def _query(self, sql: str, params: tuple) -> list[tuple]:
        async with self.pool.connection() as db:
            return await (await db.execute(sql, params)).fetchall()

    async def _transaction(self, statements: list[tuple[str, tuple]]) -> list[int]:
        async with self.pool.connection() as db, db.transaction():
            return [(await db.execute(sql, params)).rowcount for sql, params in statements]
