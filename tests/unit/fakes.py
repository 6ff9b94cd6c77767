"""A fake DeploymentHandle for unit tests of ingress logic (never used end to end)."""

import asyncio
import copy
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

from deployments.common.contracts import Frame
from serve_app.ratelimit import RateLimiter
from serve_app.store.deployment import ResponseStore


class FakeStream:
    """Mimics a streaming ``DeploymentResponseGenerator``."""

    def __init__(self, frames: list[Frame] | Exception) -> None:
        self._frames = frames
        self._index = 0
        self.cancelled = False

    def __aiter__(self) -> "FakeStream":
        return self

    async def __anext__(self) -> Frame:
        if isinstance(self._frames, Exception):
            raise self._frames
        if self._index >= len(self._frames):
            raise StopAsyncIteration
        frame = self._frames[self._index]
        self._index += 1
        if isinstance(frame, Exception):
            raise frame
        return frame

    def cancel(self) -> None:
        self.cancelled = True


class _Method:
    def __init__(self, fn: Callable[..., Any]) -> None:
        self._fn = fn

    def remote(self, *args: Any, **kwargs: Any) -> Any:
        return self._fn(*args, **kwargs)


class FakeHandle:
    """``handle.options(stream=True).<method>.remote(...)`` returns a ``FakeStream`` of
    ``frames``; ``ready.remote()`` is awaitable; ``decode.remote(data)`` returns a marker."""

    def __init__(self, frames: list[Frame] | Exception, ready: bool = True) -> None:
        self.frames = frames
        self.is_ready = ready
        self.calls: list[tuple[str, tuple[Any, ...]]] = []
        self.streams: list[FakeStream] = []
        self.model_id = ""  # Serve's multiplexed model id this handle routes by
        self.routed: list[str] = []  # the multiplexed model id of each call

    def options(self, **options: Any) -> "FakeHandle":
        if "multiplexed_model_id" not in options:
            return self
        routed = copy.copy(self)  # shares the calls
        routed.model_id = options["multiplexed_model_id"]
        return routed

    def __getattr__(self, name: str) -> _Method:
        if name.startswith("_"):
            raise AttributeError(name)

        def call(*args: Any, **_: Any) -> Any:  # e.g. an LLM call's ``caller``
            self.calls.append((name, args))
            self.routed.append(self.model_id)
            if name == "ready":
                return self._ready()
            if name == "decode":
                return ("decoded", len(args[0]))
            stream = FakeStream(self.frames)
            self.streams.append(stream)
            return stream

        return _Method(call)

    async def _ready(self) -> str:
        if not self.is_ready:
            raise RuntimeError("engine dead at /secret/path")
        return "ok"


class LocalHandle:
    """Calls a real deployment object in process: ``handle.method.remote(...)`` -> a task,
    started at once as a real handle's call is."""

    def __init__(self, target: Any) -> None:
        self.target = target
        self.deployment_name, self.app_name = type(target).__name__, "local"

    def __getattr__(self, name: str) -> _Method:
        method = getattr(self.target, name)

        async def call(*args: Any, **kwargs: Any) -> Any:
            result = method(*args, **kwargs)
            return await result if inspect.isawaitable(result) else result

        return _Method(lambda *args, **kwargs: asyncio.ensure_future(call(*args, **kwargs)))


def local_limiter(data_dir: Path) -> LocalHandle:
    """A real rate limiter, in process, with its usage ledger in a real SQLite store."""
    store = ResponseStore({"path": str(data_dir / "ledger.sqlite3")})
    return LocalHandle(RateLimiter(LocalHandle(store)))
