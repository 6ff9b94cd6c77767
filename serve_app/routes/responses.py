"""The Responses API: ``/v1/responses`` and the stored responses under it.

``POST /v1/responses`` expands the stored history (the ``previous_response_id`` chain, or the
``conversation``'s items) and this request's input into one chat request, runs it through
the chat pipeline (the same checks, admission, audio parts, limits and metrics as
``/v1/chat/completions``, on any chat-capable model) as a stream, and turns its chunks into
a Response (``serve_app/bridge.py``).
A stored response (``store`` defaults to true) is committed before the client sees its end:
``response.completed`` (or ``incomplete``/``failed``) in a stream, the body otherwise. Every
stored response belongs to the API key that made it: any other key gets 404. A background
response (``Background``, at the end) runs on without its client.
"""

import asyncio
import contextlib
import copy
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import ValidationError

from deployments.common.contracts import ChunkFrame, ErrorFrame, Frame
from deployments.common.errors import describe_validation_errors
from serve_app.auth import APIKey, require
from serve_app.bridge import ResponseBuilder, base_response
from serve_app.dispatch import cancel_call, open_call, rest_frames
from serve_app.errors import APIError, error_response
from serve_app.log import LOGGER
from serve_app.pipeline import registry, report
from serve_app.protocol.openai import ChatCompletionRequest
from serve_app.protocol.responses import INCLUDE as Include
from serve_app.protocol.responses import ResponseRequest, new_id, response_param, to_messages
from serve_app.routes.generation import generate_call, prepare
from serve_app.routes.stored import Order, not_found, owner_of, page, store_call
from serve_app.sse import named_event
from serve_app.store import TOO_LONG

logger = logging.getLogger(LOGGER)
router = APIRouter()
Key = Annotated[APIKey | None, Depends(require("responses"))]


def _chat_request(body: ResponseRequest, items: list[dict[str, Any]]) -> ChatCompletionRequest:
    try:
        return ChatCompletionRequest.model_validate(body.chat_body(items))
    except ValidationError as exc:
        message, param = describe_validation_errors(exc.errors())
        raise APIError(400, message, param=response_param(param)) from None


@router.post("/v1/responses")
async def create_response(body: ResponseRequest, request: Request, key: Key) -> Response:
    options = registry(request).config.store
    body.check(options.max_input_items)
    owner = owner_of(key)
    history = await _history(request, body, owner, options.max_chain)
    items = body.input_items()
    if len(json.dumps(items)) > options.max_response_bytes:
        raise APIError(
            400,
            f"The input is larger than {options.max_response_bytes} bytes as stored.",
            param="input",
        )
    chat = _chat_request(body, history + items)
    try:
        model, record, _ = await prepare("chat", chat, request, key)  # audio transcribed
    except APIError as exc:
        exc.frame.param = response_param(exc.frame.param)
        raise
    record.stream = bool(body.stream)
    rid = record.request_id
    builder = ResponseBuilder(base_response(new_id("resp"), body, model.id, int(time.time())))
    limits = registry(request).config.limits
    timeout_s = limits.stream_ttft_timeout_s if body.stream else limits.request_timeout_s
    # what truncation 'auto' may drop: the history's messages (not the instructions, not
    # this request's input), oldest first
    first_kept = 1 if body.instructions else 0
    droppable = len(to_messages(history)) if body.truncation == "auto" else 0

    async def open_() -> tuple[Any, Frame]:
        """Start the model's work: ``(stream, first frame)``; with truncation 'auto', a
        history too long for the model loses its oldest messages, 1, then 2, 4, ... more
        at each try, until the request fits (each refusal comes before any compute)."""
        dropped, step = 0, 1
        while True:
            messages = chat.messages[:first_kept] + chat.messages[first_kept + dropped :]
            if dropped:
                messages = _from_user_turn(messages, first_kept)
            shorter = chat.model_copy(update={"messages": messages})
            sent = {**model.family.backend_body(shorter, model.config), **STREAMED}
            call = generate_call(model, "chat", sent, rid)
            try:
                stream, first = await open_call(
                    call, rid, timeout_s, limits.retry_after_s, needs=(model.handle,)
                )
            except APIError as exc:
                stream, first = None, exc.frame
                first.headers = exc.headers
            if dropped >= droppable or not _too_long(first):
                if isinstance(first, ErrorFrame):
                    first.param = response_param(first.param)
                return stream, first
            cancel_call(stream)
            dropped, step = min(droppable, dropped + step), step * 2

    async def save(events: list[dict] | None = None, lease_until: int | None = None) -> None:
        """Store the response (with its ``events``, for a background one), and once it has
        ended add its input and output to its conversation."""
        if body.store is not False:
            response = builder.response
            await store_call(request, "put_response", owner, response, items, events, lease_until)
        conversation = body.conversation_id
        if conversation and builder.response["status"] in ("completed", "incomplete"):
            new = items + builder.response["output"]
            if not await store_call(request, "add_items", owner, conversation, new):
                raise not_found("Conversation", conversation, "conversation")

    if body.background:
        return await Background(request, builder, save, record, owner).start(open_, body.stream)
    stream, first = await open_()
    if isinstance(first, ErrorFrame):  # refused before any output: nothing to store
        cancel_call(stream)
        return error_response(first, first.headers)
    frames = _frames(first, rest_frames(stream, record.add_usage, record.failed))
    if body.stream:
        return StreamingResponse(
            _events(builder, frames, save, rid),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
    async for _ in _response_events(builder, frames, rid):
        pass
    await save()
    return JSONResponse(builder.response)


STREAMED = {"stream": True, "stream_options": {"include_usage": True}}


def _too_long(frame: Frame) -> bool:
    """Whether the model refused the prompt as longer than its context (vLLM names
    ``input_tokens``; OpenAI-compatible servers say "context length")."""
    if not isinstance(frame, ErrorFrame) or frame.status != 400:
        return False
    return frame.param == "input_tokens" or "context length" in frame.message.lower()


def _from_user_turn(messages: list[Any], first_kept: int) -> list[Any]:
    """``messages`` whose history starts at a user turn (a cut must not leave a tool result
    or an assistant turn without what it answered)."""
    head, rest = messages[:first_kept], messages[first_kept:]
    while len(rest) > 1 and rest[0].role != "user":
        rest = rest[1:]
    return head + rest


async def _history(
    request: Request, body: ResponseRequest, owner: str, max_chain: int
) -> list[dict[str, Any]]:
    """The stored items this response continues: its conversation's, or its
    ``previous_response_id`` chain's."""
    if body.conversation_id is not None:
        found = await store_call(request, "conversation_items", owner, body.conversation_id)
        if found is None:
            raise not_found("Conversation", body.conversation_id, "conversation")
        return found
    if body.previous_response_id is None:
        return []
    found = await store_call(request, "history", owner, body.previous_response_id, max_chain)
    if found is None:
        raise not_found("Response", body.previous_response_id, "previous_response_id")
    if found == TOO_LONG:
        raise APIError(
            400,
            f"The chain of previous responses is longer than {max_chain} responses; start "
            "a new one.",
            param="previous_response_id",
        )
    return found


async def _frames(first: Frame, rest: AsyncIterator[Frame]) -> AsyncIterator[Frame]:
    yield first
    async for frame in rest:
        yield frame


async def _response_events(
    builder: ResponseBuilder, frames: AsyncIterator[Frame], rid: str
) -> AsyncIterator[tuple[list[dict[str, Any]], bool]]:
    """The events of each chat frame, as ``(events, False)``, then the events that end the
    response (completed, incomplete or failed) as ``(events, True)``."""
    try:
        async for frame in frames:
            if isinstance(frame, ChunkFrame):
                yield builder.feed(json.loads(frame.data)), False
            elif isinstance(frame, ErrorFrame):
                yield builder.fail(frame), True
                return
    except Exception:
        logger.exception("stream failed mid-way [request_id=%s]", rid)
        message = f"The model backend failed mid-stream (request id: {rid})."
        yield builder.fail(ErrorFrame(500, message)), True
        return
    yield builder.finish(), True


async def _events(
    builder: ResponseBuilder, frames: AsyncIterator[Frame], save: Any, rid: str
) -> AsyncIterator[bytes]:
    """The SSE stream of one response; it is stored before its last event goes out."""
    try:
        for event in builder.start():
            yield named_event(event)
        end: list[dict[str, Any]] = []
        async for events, last in _response_events(builder, frames, rid):
            if last:
                end = events
                break
            for event in events:
                yield named_event(event)
        try:
            await save()
        except APIError as exc:
            error = exc.frame
            yield named_event(
                {
                    "type": "error",
                    "sequence_number": builder.sequence,
                    "code": error.code,
                    "message": error.message,
                    "param": None,
                }
            )
            return
        for event in end:
            yield named_event(event)
    finally:
        if not builder.ended:  # the client went away: keep what was made, as cancelled
            builder.cancel()
            task = asyncio.ensure_future(save())
            task.add_done_callback(lambda t: t.cancelled() or t.exception())


@router.get("/v1/responses/{response_id}")
async def get_response(
    response_id: str,
    request: Request,
    key: Key,
    include: Annotated[list[Include] | None, Query()] = None,
    stream: bool = False,
    starting_after: Annotated[int | None, Query(ge=-1)] = None,
    include_obfuscation: bool | None = None,
) -> Response:
    """The stored response; with ``stream=true`` (background responses), its events after
    ``starting_after`` (all by default) and then the live ones until it ends."""
    owner = owner_of(key)
    found = await store_call(request, "get_response", owner, response_id)
    if found is None:
        raise not_found("Response", response_id, "response_id")
    if not stream:
        if starting_after is not None:
            raise APIError(400, "'starting_after' needs stream=true.", param="starting_after")
        return JSONResponse(found)
    if not found["background"]:
        raise APIError(400, "Only background responses can be streamed again.", param="stream")
    after = -1 if starting_after is None else starting_after
    return StreamingResponse(
        _replay(request, owner, response_id, after),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


@router.delete("/v1/responses/{response_id}")
async def delete_response(response_id: str, request: Request, key: Key) -> JSONResponse:
    if not await store_call(request, "delete_response", owner_of(key), response_id):
        raise not_found("Response", response_id, "response_id")
    return JSONResponse({"id": response_id, "object": "response.deleted", "deleted": True})


@router.post("/v1/responses/{response_id}/cancel")
async def cancel_response(response_id: str, request: Request, key: Key) -> JSONResponse:
    """Stop a background response: its runner aborts the engine work at its next lease
    renewal (within about a second) and stores it ``cancelled``; answers with the response
    as it then stands. A response that has already ended is returned as it is."""
    owner = owner_of(key)
    found = await store_call(request, "get_response", owner, response_id)
    if found is None:
        raise not_found("Response", response_id, "response_id")
    if not found["background"]:
        raise APIError(400, "Only background responses can be cancelled.", param="response_id")
    if found["status"] in ("queued", "in_progress"):
        await store_call(request, "request_cancel", owner, response_id)
        deadline = time.monotonic() + 5 * RENEW_S + 2
        while found["status"] in ("queued", "in_progress") and time.monotonic() < deadline:
            await asyncio.sleep(POLL_S)
            found = await store_call(request, "get_response", owner, response_id)
    return JSONResponse(found)


@router.get("/v1/responses/{response_id}/input_items")
async def input_items(
    response_id: str,
    request: Request,
    key: Key,
    after: str | None = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    order: Order = "desc",
    include: Annotated[list[str] | None, Query()] = None,
) -> JSONResponse:
    """A response's own input items (not those of the responses it continues), newest
    first unless ``order=asc``; ``after`` an item id, ``limit`` 1 to 100."""
    items = await store_call(request, "input_items", owner_of(key), response_id)
    if items is None:
        raise not_found("Response", response_id, "response_id")
    return JSONResponse(page(items, after, limit, order))


# Background responses. The ingress replica that took the request runs it as a task of its
# own, holding a lease on it in the store (renewed every RENEW_S, valid LEASE_S): if that
# replica dies, the lease runs out and the next read ends the response ``failed``. The task
# also learns of a cancel at each renewal. Events are stored as they come, a batch at most
# every FLUSH_S, so any replica can replay and follow them (``GET ?stream=true``).
LEASE_S = 15
RENEW_S = 1.0
FLUSH_S = 0.25
POLL_S = 0.25  # how often a follower of a background stream reads new events


class Background:
    """One background response, from its ``queued`` answer to its end."""

    def __init__(self, request: Request, builder: ResponseBuilder, save: Any, record, owner: str):
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
                frames = _frames(first, rest_frames(stream, record.add_usage, record.failed))
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
        async for events, last in _response_events(self.builder, frames, self.record.request_id):
            if last:
                return events
            self._emit(events)
            if loop.time() - flushed > FLUSH_S:
                await self._flush()
                flushed = loop.time()
        return []  # not reached: the last item is always the end


def _lease() -> int:
    return int(time.time() + LEASE_S)


async def _replay(
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
