"""A fake DeploymentHandle for unit tests of ingress logic (never used end to end)."""

from collections.abc import Callable
from typing import Any

from deployments.common.contracts import Frame


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

    def remote(self, *args: Any) -> Any:
        return self._fn(*args)


class FakeHandle:
    """``handle.options(stream=True).generate.remote(...)`` and ``handle.ready.remote()``."""

    def __init__(self, frames: list[Frame] | Exception, ready: bool = True) -> None:
        self.frames = frames
        self.is_ready = ready
        self.calls: list[tuple[Any, ...]] = []
        self.streams: list[FakeStream] = []

    def options(self, **_: Any) -> "FakeHandle":
        return self

    @property
    def generate(self) -> _Method:
        def call(*args: Any) -> FakeStream:
            self.calls.append(args)
            stream = FakeStream(self.frames)
            self.streams.append(stream)
            return stream

        return _Method(call)

    @property
    def ready(self) -> _Method:
        async def call() -> str:
            if not self.is_ready:
                raise RuntimeError("engine dead at /secret/path")
            return "ok"

        return _Method(call)
