"""Background responses (``background: true``): the work goes on without its client.

The ingress replica that took the request runs it as a task of its own, holding a lease on it
in the store (renewed every RENEW_S, valid LEASE_S): if that replica dies, the lease runs out
and the next read ends the response ``failed``. The task also learns of a cancel at each
renewal. Events are stored as they come, a batch at most every FLUSH_S, so any replica can
replay and follow them (``GET /v1/responses/{id}?stream=true``, ``replay``).
"""

import asyncio
import contextlib
import copy
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from deployments.common.contracts import ErrorFrame, Frame
from serve_app.bridge import ResponseBuilder, chain_frames, response_events
from serve_app.dispatch import cancel_call, rest_frames
from serve_app.errors import APIError
from serve_app.log import LOGGER
from serve_app.pipeline import Finished, report
from serve_app.routes.stored import store_call
from serve_app.sse import named_event

logger = logging.getLogger(LOGGER)

LEASE_S = 15
RENEW_S = 1.0
FLUSH_S = 0.25
POLL_S = 0.25  # how often a follower of a background stream reads new events


class Background:
    """One background response, from its ``queued`` answer to its end."""

    def __init__(
        self, request: Request, builder: ResponseBuilder, save: Any, record: Finished, owner: str
    ):
        self.request, self.builder, self.save = request, builder, save
        self.record, self.owner = record, owner
        self.id = builder.response["id"]
        self.pending: list[dict[str, Any]] = []  # events not yet stored
        self.live: asyncio.Queue | None = None  # events for the client of a streamed request
        self.cancelled = asyncio.Event()

    async def start(self, open_: Any, stream: bool | None) -> Response:
        """Store it as ``queued`` and start its task; answer at once (or stream it)."""
        self.builder.response["status"] = "queued"
        queued = copy.deepcopy(self.builder.response)
        await self.save(None, _lease())
        self.record.deferred = True  # reported when the task ends, with its usage
        if stream:
            self.live = asyncio.Queue()
        task = asyncio.create_task(self._run(open_))
        running = self.request.app.state.background
        running.add(task)
        task.add_done_callback(running.discard)
        if self.live is None:
            return JSONResponse(queued)
        return StreamingResponse(
            self._follow(), media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )  # fmt: skip

    async def _follow(self) -> AsyncIterator[bytes]:
        while (event := await self.live.get()) is not None:
            yield named_event(event)

    def _emit(self, events: list[dict[str, Any]]) -> None:
        self.pending += events
        if self.live is not None:
            for event in events:
                self.live.put_nowait(event)

    async def _flush(self) -> None:
        batch, self.pending = self.pending, []
        if batch:  # shielded: a cancel must not lose a batch already taken
            call = store_call(self.request, "add_events", self.owner, self.id, batch)
            await asyncio.shield(call)

    async def _keep_lease(self) -> None:
        while True:
            await asyncio.sleep(RENEW_S)
            try:
                if await store_call(self.request, "renew", self.owner, self.id, _lease()):
                    self.cancelled.set()
                    return
            except APIError:
                pass  # the store is away: the lease is still good for a while

    async def _run(self, open_: Any) -> None:
        builder, record = self.builder, self.record
        lease = asyncio.create_task(self._keep_lease())
        end: list[dict[str, Any]] = []
        try:
            stream, first = await open_()
            self._emit(builder.start())
            await self.save(self.pending, _lease())  # in_progress, from any replica
            self.pending = []
            if isinstance(first, ErrorFrame):
                cancel_call(stream)
                end = builder.fail(first)
            else:
                frames = chain_frames(
                    first, rest_frames(stream, record.add_usage, record.failed, first)
                )
                work = asyncio.create_task(self._consume(frames))
                stop = asyncio.create_task(self.cancelled.wait())
                await asyncio.wait({work, stop}, return_when=asyncio.FIRST_COMPLETED)
                stop.cancel()
                if work.done():
                    end = work.result()
                else:  # cancelled: stop the engine work, keep what was made
                    work.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await work
                    builder.cancel()
        except Exception:
            logger.exception("background response failed [request_id=%s]", record.request_id)
            if not builder.ended:
                message = f"The server had an error (request id: {record.request_id})."
                end = builder.fail(ErrorFrame(500, message))
        finally:
            lease.cancel()
            try:  # the end is stored with its events before a follower can see it
                await self.save(self.pending + end, None)
            except Exception:
                logger.exception("background response not stored [request_id=%s]", self.id)
            if self.live is not None:
                for event in end:
                    self.live.put_nowait(event)
                self.live.put_nowait(None)
            record.ended = time.monotonic()
            report(self.request.app.state.observers, record)

    async def _consume(self, frames: AsyncIterator[Frame]) -> list[dict[str, Any]]:
        """Feed the chat frames to the builder, storing events as they come; the events
        that end the response."""
        loop = asyncio.get_running_loop()
        flushed = loop.time()
        async for events, last in response_events(self.builder, frames, self.record.request_id):
            if last:
                return events
            self._emit(events)
            if loop.time() - flushed > FLUSH_S:
                await self._flush()
                flushed = loop.time()
        return []  # not reached: the last item is always the end


def _lease() -> int:
    return int(time.time() + LEASE_S)


async def replay(
    request: Request, owner: str, response_id: str, after: int
) -> AsyncIterator[bytes]:
    """A background response's stored events after ``after``, then its live ones as they
    are stored, until it ends. A runner that died (its lease ran out) ends as
    ``response.failed``."""
    last_type = None
    while True:
        got = await store_call(request, "events_after", owner, response_id, after)
        if got is None:
            return
        for event in got["events"]:
            yield named_event(event)
            after, last_type = event["sequence_number"], event["type"]
        response = got["response"]
        if response["status"] not in ("queued", "in_progress"):
            if response["status"] == "failed" and last_type != "response.failed":
                failed = {"type": "response.failed", "sequence_number": after + 1}
                yield named_event({**failed, "response": response})
            return
        await asyncio.sleep(POLL_S)
