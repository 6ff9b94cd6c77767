"""The ingress replica's side of the per-step channel (``deployments/common/channel.py``).

``Channels.call`` wraps a model's streaming handle call so that what comes on the channel
reads as if it came on the call: the routes, ``dispatch`` and the SSE framing see the same
frames as before. The wrapper keeps the call open for the life of the request, so
cancelling it (the client went away) aborts the generation, and a dead replica's error
ends the stream as before. A channel that ends while streams still expect chunks on it
(its replica died, or it was replaced) ends those streams with an error.
"""

import asyncio
import contextlib
import logging
import uuid
from collections import deque
from collections.abc import Callable
from typing import Any

from deployments.common.channel import Moved, Sent
from deployments.common.contracts import ChunkFrame, Frame
from deployments.common.tasks import detached
from serve_app.log import LOGGER

logger = logging.getLogger(LOGGER)

OPEN_TIMEOUT_S = 30.0  # a channel call not answered by then is cancelled (tried again later)


class ChannelLost(ConnectionError):
    """The channel a stream's chunks came on ended before the stream did."""


class Channels:
    """This ingress replica's channels, one per model replica it has had a stream on."""

    def __init__(self) -> None:
        self.caller = uuid.uuid4().hex  # this ingress replica, as model replicas know it
        self._queues: dict[str, asyncio.Queue] = {}  # request id -> what came for it
        self._on: dict[str, str] = {}  # request id -> the replica whose channel it is on
        self._open: dict[str, asyncio.Task] = {}  # replica -> the task reading its channel
        self._opening: set[int] = set()  # handles (by id) a channel call is being made to

    def call(self, handle: Any, start: Callable[[str], Any], request_id: str) -> "ChannelCall":
        """``start(caller)`` makes the handle call (passing ``caller`` on to ``relay``)."""
        queue: asyncio.Queue = asyncio.Queue()
        self._queues[request_id] = queue
        try:
            stream = start(self.caller)
        except BaseException:
            del self._queues[request_id]
            raise
        return ChannelCall(self, handle, stream, request_id, queue)

    def connect(self, handle: Any) -> None:
        """Open a channel to a replica of ``handle``'s deployment (Serve picks which; a
        stream that stayed on its call named one without a channel), one try at a time."""
        if id(handle) not in self._opening:
            self._opening.add(id(handle))
            # Detached: made in the request's context, the channel call would be that
            # request's child, and Serve would cancel it (and end every stream on it) when
            # that one client went away.
            detached(self._read(handle))

    async def _read(self, handle: Any) -> None:
        stream = handle.options(stream=True, _by_reference=False).channel.remote(self.caller)
        replica = None
        this = asyncio.current_task()
        try:
            reached = await asyncio.wait_for(stream.__anext__(), OPEN_TIMEOUT_S)
            self._opening.discard(id(handle))
            if reached in self._open:  # Serve routed it to a replica we have a channel to
                return
            replica = reached
            self._open[replica] = this
            logger.info("channel to replica %s open", replica)
            async for batch in stream:
                for request_id, frames in batch.items():
                    if queue := self._queues.get(request_id):
                        queue.put_nowait(frames)
        except (Exception, asyncio.CancelledError) as exc:
            logger.info("channel to replica %s ended: %r", replica, exc)
        finally:
            self._opening.discard(id(handle))
            with contextlib.suppress(Exception):
                stream.cancel()
            if replica is not None and self._open.get(replica) is this:
                del self._open[replica]
                for request_id, on in list(self._on.items()):
                    if on == replica:
                        self._queues[request_id].put_nowait(ChannelLost(replica))

    def _moved(self, request_id: str, replica: str) -> None:
        self._on[request_id] = replica

    def _forget(self, request_id: str) -> None:
        self._queues.pop(request_id, None)
        self._on.pop(request_id, None)


class ChannelCall:
    """One request's handle call, with its chunks from the channel when they moved there.
    Quacks like Serve's ``DeploymentResponseGenerator`` where ``dispatch`` uses it."""

    def __init__(
        self,
        channels: Channels,
        handle: Any,
        stream: Any,
        request_id: str,
        queue: asyncio.Queue,
    ) -> None:
        self.channels = channels
        self.handle = handle
        self.stream = stream
        self.request_id = request_id
        self.queue = queue
        self.buffer: deque = deque()
        self.moved = False
        self.expected: int | None = None  # frames the channel carries, once ``Sent`` came
        self.received = 0
        self.end: asyncio.Future | None = None

    @property
    def _replica_result_future(self) -> Any:  # read by dispatch._assigned
        return getattr(self.stream, "_replica_result_future", None)

    def cancel(self) -> None:
        self._close()
        self.stream.cancel()

    def _close(self) -> None:
        self.channels._forget(self.request_id)  # noqa: SLF001
        if self.end is not None:
            self.end.cancel()

    def __aiter__(self) -> "ChannelCall":
        return self

    async def __anext__(self) -> Frame:
        try:
            if self.moved:
                return await self._from_channel()
            frame = await self.stream.__anext__()
            while isinstance(frame, Moved):
                if frame.channel:
                    self.moved = True
                    self.channels._moved(self.request_id, frame.replica)  # noqa: SLF001
                    self.end = asyncio.ensure_future(self._await_end())
                    return await self._from_channel()
                self.channels.connect(self.handle)
                frame = await self.stream.__anext__()
            return frame
        except BaseException:
            self._close()
            raise

    async def _await_end(self) -> None:
        """The call's last frame (``Sent``) or its error, into the queue."""
        try:
            end = await self.stream.__anext__()
            self.queue.put_nowait(end if isinstance(end, Sent) else ChannelLost(repr(end)))
        except StopAsyncIteration:
            self.queue.put_nowait(ChannelLost("the call ended without its count"))
        except Exception as exc:  # the replica died, say
            self.queue.put_nowait(exc)

    async def _from_channel(self) -> Frame:
        while not self.buffer:
            if self.expected is not None and self.received >= self.expected:
                self._close()
                raise StopAsyncIteration
            item = await self.queue.get()
            if isinstance(item, list):
                self.buffer.extend(item)
                self.received += len(item)
            elif isinstance(item, Sent):
                self.expected = item.frames
            else:
                raise item
        frame = self.buffer.popleft()
        return ChunkFrame(frame) if isinstance(frame, str) else frame


CHANNELS = Channels()  # this process's (an ingress replica's)
