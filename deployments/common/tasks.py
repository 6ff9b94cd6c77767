"""Work that must outlive the request that started it.

Serve cancels the handle calls a request made (it finds them through the request context)
when that request is cancelled: its client went away. A charge, a channel shared by many
streams, or the save of a response cut short must go on; ``detached`` runs them in a task
with a context of its own, kept from the garbage collector until it ends.
"""

import asyncio
import contextvars
from collections.abc import Coroutine
from typing import Any

_running: set[asyncio.Task] = set()


def detached(work: Coroutine[Any, Any, Any]) -> asyncio.Task:
    task = asyncio.get_running_loop().create_task(work, context=contextvars.Context())
    _running.add(task)
    task.add_done_callback(_running.discard)
    return task
