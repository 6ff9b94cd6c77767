"""The ``ResponseStore`` Serve deployment: owns the store backend and deletes what is past
its retention once an hour."""

import asyncio
import contextlib
import logging
from typing import Any

from serve_app.config import StoreOptions
from serve_app.log import LOGGER
from serve_app.store import SQLStore, open_store

logger = logging.getLogger(LOGGER)

CLEANUP_EVERY_S = 3600


class ResponseStore:
    def __init__(self, options: dict[str, Any]) -> None:
        self.options = StoreOptions.model_validate(options)
        self.store: SQLStore | None = None
        self._starting = asyncio.Lock()
        self._cleanup: asyncio.Task | None = None

    async def _ready(self) -> SQLStore:
        async with self._starting:
            if self.store is None:
                store = open_store(self.options)
                await store.start()
                self.store = store
                self._cleanup = asyncio.create_task(self._clean())
                logger.info("response store ready (%s)", self.options.backend)
        return self.store

    async def _clean(self) -> None:
        while True:
            with contextlib.suppress(Exception):
                deleted = await self.store.cleanup()
                if deleted:
                    logger.info("response store: %d expired responses deleted", deleted)
            await asyncio.sleep(CLEANUP_EVERY_S)

    async def call(self, operation: str, *args: Any) -> Any:
        """Run one of the store's operations (``SQLStore.OPERATIONS``)."""
        if operation not in SQLStore.OPERATIONS:
            raise ValueError(f"not a store operation: {operation}")
        return await getattr(await self._ready(), operation)(*args)

    async def check_health(self) -> None:
        """Serve's health check: the backend answers a query."""
        await (await self._ready())._query("SELECT 1", ())
