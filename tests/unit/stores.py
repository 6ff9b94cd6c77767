"""A store on each backend for the store's tests: SQLite in a temp dir and a real PostgreSQL
server the session starts (``tests/postgres_server.py``); ``make_store`` is a fixture of
``conftest.py``."""

import asyncio
import itertools
import uuid

import psycopg
import pytest

from serve_app.store.postgres import PostgresStore
from serve_app.store.sqlite import SQLiteStore

DAY = 86400
_databases = itertools.count()


@pytest.fixture(params=["sqlite", "postgres"])
def make_store(request, tmp_path):
    """``make_store(retention_s)`` -> a started store on a fresh database."""
    made = []

    def make(retention_s: float = 30 * DAY):
        if request.param == "sqlite":
            store = SQLiteStore(str(tmp_path / "responses.sqlite3"), retention_s)
        else:
            dsn = request.getfixturevalue("postgres_dsn")
            name = f"t{next(_databases)}_{uuid.uuid4().hex[:8]}"
            if not made:
                with psycopg.connect(dsn, autocommit=True) as db:
                    db.execute(f"CREATE DATABASE {name}")
                request.node.dsn = dsn.rsplit("/", 1)[0] + "/" + name
            store = PostgresStore(request.node.dsn, retention_s)
        run(store.start())
        made.append(store)
        return store

    yield make
    for store in made:
        run(store.close())


def run(coro):
    return asyncio.run(coro) if not _LOOP else _LOOP.run_until_complete(coro)


_LOOP = asyncio.new_event_loop()  # one loop: a psycopg pool lives on the loop it opened on
