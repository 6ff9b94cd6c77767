"""Token streams at the engine's pace: the model replica's side of the per-step channel.

Every streamed token used to cross the model replica -> ingress hop as a message of its own,
so the cost of an engine step grew with the number of streams in it. Now each ingress
replica holds one long-lived streaming call per model replica, ``channel``, and a stream's
chunks after its first travel on it: each message carries every chunk the replica made for
that ingress since the last one: one per engine step, or several steps' worth when the
replica's event loop falls behind, never held back by a timer. (Serve's streaming calls
have no backpressure, so when the ingress itself falls behind, messages wait in its
process; each still carries a whole step.)

A request still reaches the model through its own handle call, routed by Serve as any
other (load balancing, ``max_ongoing_requests``, queues, autoscaling, cancellation and a
dead replica's errors are Serve's as before). That call (``relay``) yields the first frame
at once, then a ``Moved`` note: the rest of the stream goes on the channel (``Sent`` counts
it at the end), or, when this ingress has no channel to the replica yet, stays on the call
until one arrives (the ingress opens it on that note). A channel call is routed by Serve
too; its first message names the replica it reached, and a replica that already has a
channel from that ingress ends the new one at once, so the ingress ends up with one channel
to each replica its streams reach.

A channel counts as one ongoing request of its replica, so it ends itself once no stream
has used it for ``IDLE_CLOSE_S``: a replica told to stop (scale-down, redeploy) is then not
held until its graceful-shutdown timeout, and the ingress opens it again on its next stream.
"""

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from deployments.common.contracts import ChunkFrame, Frame

IDLE_CLOSE_S = 2.0

# A channel message: request id -> its frames since the last message (a chunk as its JSON
# text, other frames as they are).
Batch = dict[str, list[str | Frame]]


@dataclass(slots=True)
class Moved:
    """Sent on a stream's call after its first chunk. ``channel``: the rest of the stream
    comes on this caller's channel from ``replica``; else it stays on the call, and the
    caller should open a channel (Serve decides to which replica) for its next streams."""

    replica: str
    channel: bool


@dataclass(slots=True)
class Sent:
    """The last frame of a call whose stream moved: how many frames went on the channel."""

    frames: int


class _Box:
    """The frames waiting for one caller's channel."""

    def __init__(self) -> None:
        self.pending: Batch = {}
        self.ready = asyncio.Event()
        self.open = True
        self.streams = 0  # streams moved here and not yet ended

    def put(self, request_id: str, frame: Frame) -> None:
        if self.open:
            data = frame.data if isinstance(frame, ChunkFrame) else frame
            self.pending.setdefault(request_id, []).append(data)
            self.ready.set()

    def close(self) -> None:
        """After the channel ended: streams still holding the box drop their frames."""
        self.open = False
        self.pending = {}

    async def batches(self) -> AsyncIterator[Batch]:
        while True:
            try:
                await asyncio.wait_for(self.ready.wait(), IDLE_CLOSE_S)
            except TimeoutError:
                if self.streams == 0:
                    return
                continue
            self.ready.clear()
            batch, self.pending = self.pending, {}
            if batch:
                yield batch


class Outbox:
    """A model replica's open channels, by caller (one per ingress replica)."""

    def __init__(self, replica: str) -> None:
        self.replica = replica
        self._boxes: dict[str, _Box] = {}

    async def channel(self, caller: str) -> AsyncIterator[str | Batch]:
        """The channel to ``caller``: this replica's id, then the caller's chunks, a message
        per engine step. Ends at once after the id if ``caller`` has a channel here."""
        yield self.replica
        if caller in self._boxes:
            return
        box = self._boxes[caller] = _Box()
        try:
            async for batch in box.batches():
                yield batch
        finally:
            box.close()
            del self._boxes[caller]

    async def relay(
        self, frames: AsyncIterator[Frame], request_id: str, caller: str | None
    ) -> AsyncIterator[Any]:
        """A call's frames: the first as it comes; for a stream, then ``Moved`` as soon as
        its ``caller`` has a channel here (after the first chunk, or later, once the channel
        the caller opened arrives), the rest on the channel and ``Sent`` at the end. A
        stream whose caller has no channel here says so after its first chunk."""
        box: _Box | None = None
        sent = 0
        first = True
        try:
            async for frame in frames:
                if box is not None:
                    box.put(request_id, frame)
                    sent += 1
                    continue
                yield frame
                if caller is not None and isinstance(frame, ChunkFrame):
                    box = self._boxes.get(caller)
                    if box is not None:
                        box.streams += 1
                        yield Moved(self.replica, True)
                    elif first:
                        yield Moved(self.replica, False)
                first = False
            if box is not None:
                yield Sent(sent)
        finally:
            if box is not None:
                box.streams -= 1
