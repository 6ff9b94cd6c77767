"""The embedded store: one SQLite file in WAL mode, used by the store's single replica.

sqlite3 blocks, so every operation runs in a worker thread, one at a time (one connection).
"""

import asyncio
import sqlite3
from pathlib import Path

from serve_app.store.sql import MIGRATIONS, SQLStore


class SQLiteStore(SQLStore):
    def __init__(self, path: str, retention_s: float, usage_retention_s: float = 400 * 86400):
        super().__init__(retention_s, usage_retention_s)
        self.path = path
        self._db: sqlite3.Connection | None = None
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        await asyncio.to_thread(self._open)

    def _open(self) -> None:
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")  # WAL: a commit survives a process crash
        db.execute("PRAGMA foreign_keys=ON")
        db.execute("PRAGMA busy_timeout=5000")
        db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        row = db.execute("SELECT version FROM schema_version").fetchone()
        version = row[0] if row else 0
        for number, migration in enumerate(MIGRATIONS[version:], start=version + 1):
            db.execute("BEGIN IMMEDIATE")
            for statement in migration:
                db.execute(statement)
            db.execute("DELETE FROM schema_version")
            db.execute("INSERT INTO schema_version (version) VALUES (?)", (number,))
            db.execute("COMMIT")
        self._db = db

    async def close(self) -> None:
        if self._db is not None:
            async with self._lock:
                await asyncio.to_thread(self._db.close)
            self._db = None

    async def _query(self, sql: str, params: tuple) -> list[tuple]:
        async with self._lock:
            return await asyncio.to_thread(self._run_query, _qmark(sql), params)

    def _run_query(self, sql: str, params: tuple) -> list[tuple]:
        return self._db.execute(sql, params).fetchall()

    async def _transaction(self, statements: list[tuple[str, tuple]]) -> list[int]:
        async with self._lock:
            return await asyncio.to_thread(self._run_transaction, statements)

    def _run_transaction(self, statements: list[tuple[str, tuple]]) -> list[int]:
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            counts = [db.execute(_qmark(sql), params).rowcount for sql, params in statements]
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
        return counts


def _qmark(sql: str) -> str:
    return sql.replace("%s", "?")
