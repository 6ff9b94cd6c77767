"""Stored responses for the Responses API, conversations and the usage ledger: where they
live and who may read them.

``open_store`` makes the backend the config names: ``SQLiteStore`` (the embedded default, one
file) or ``PostgresStore`` (clusters). The ``ResponseStore`` deployment owns it; the ingress
replicas call it through its handle (``HandleStore``), so every ingress replica sees the same
responses. Each record belongs to the API key that wrote it (``owner``).
"""

import os
from pathlib import Path
from typing import Any

from serve_app.store.sql import TOO_LONG, SQLStore

__all__ = ["TOO_LONG", "HandleStore", "SQLStore", "default_path", "open_store"]


def default_path() -> Path:
    """``$SERVE_APP_DATA_DIR/responses.sqlite3``, else ``./data/`` at the project root."""
    data = os.environ.get("SERVE_APP_DATA_DIR")
    root = Path(data) if data else Path(__file__).resolve().parents[2] / "data"
    return root / "responses.sqlite3"


def open_store(options: Any) -> SQLStore:
    """The backend of ``options`` (a ``StoreOptions``), not yet started."""
    retention_s = options.retention_days * 86400
    usage_retention_s = options.usage_retention_days * 86400
    if options.backend == "postgres":
        from serve_app.store.postgres import PostgresStore  # noqa: PLC0415 - psycopg if used

        dsn = os.environ.get(options.dsn_env)
        if not dsn:
            raise RuntimeError(
                f"store.backend is postgres but ${options.dsn_env} (the connection string) "
                "is not set in the store replica's environment"
            )
        return PostgresStore(dsn, retention_s, usage_retention_s)
    from serve_app.store.sqlite import SQLiteStore  # noqa: PLC0415

    path = Path(options.path).expanduser() if options.path else default_path()
    return SQLiteStore(str(path), retention_s, usage_retention_s)


class HandleStore:
    """The store's operations, made on the ``ResponseStore`` deployment through its handle."""

    def __init__(self, handle: Any) -> None:
        self.handle = handle

    def __getattr__(self, name: str) -> Any:
        if name not in SQLStore.OPERATIONS:
            raise AttributeError(name)

        async def call(*args: Any) -> Any:
            return await self.handle.call.remote(name, *args)

        return call
