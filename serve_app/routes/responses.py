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

from deployments.common.contracts import ErrorFrame, Frame
from deployments.common.errors import describe_validation_errors
from deployments.common.tasks import detached
from serve_app.auth import APIKey, require
from serve_app.bridge import ResponseBuilder, base_response, chain_frames, response_events
from serve_app.dispatch import cancel_call, open_call, rest_frames
from serve_app.errors import APIError, error_response
from serve_app.log import LOGGER
from serve_app.pipeline import registry
from serve_app.protocol.items import (
    keep_transcripts,
    new_id,
    public_items,
    to_messages,
    untranscribed,
)
from serve_app.protocol.messages import TextPart, audio_parts
from serve_app.protocol.openai import ChatCompletionRequest
from serve_app.protocol.responses import INCLUDE as Include
from serve_app.protocol.responses import ResponseRequest, response_param
from serve_app.routes.background import POLL_S, RENEW_S, Background, replay
from serve_app.routes.generation import generate_call, prepare
from serve_app.routes.stored import Listing, not_found, owner_of, store_call
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
    audio = [(i, j) for i, j, _ in audio_parts(chat.messages)]  # parts with no transcript yet
    try:
        model, record, _ = await prepare("chat", chat, request, key)  # audio transcribed
    except APIError as exc:
        exc.frame.param = response_param(exc.frame.param)
        raise
    texts = [_text_at(chat.messages, i, j) for i, j in audio]
    await _keep_transcripts(request, owner, body.conversation_id, history, items, texts)
    record.stream = bool(body.stream)
    rid = record.request_id
    account = request.app.state.rate_limits.account(record)
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
            call = generate_call(model, "chat", sent, rid, account)
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
    frames = chain_frames(first, rest_frames(stream, record.add_usage, record.failed, first))
    if body.stream:
        return StreamingResponse(
            _events(builder, frames, save, rid),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
    async for _ in response_events(builder, frames, rid):
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


def _text_at(messages: list[Any], i: int, j: int) -> str | None:
    """The transcript that replaced the audio part ``j`` of message ``i`` (None if the model
    took the audio as it is)."""
    part = messages[i].content[j]
    return part.text if isinstance(part, TextPart) else None


async def _keep_transcripts(
    request: Request,
    owner: str,
    conversation: str | None,
    history: list[dict[str, Any]],
    items: list[dict[str, Any]],
    texts: list[str | None],
) -> None:
    """Keep the transcripts made for this request (``texts``, in the order of the parts of
    ``history`` and ``items`` that had none) with their stored parts (``TRANSCRIPT`` in
    ``protocol/items.py``), so no later turn transcribes or charges them again. This input's
    go into the store with it; a conversation's items (audio added through the Conversations
    API) are updated at once, best effort: one the store did not take is transcribed again
    next time. Parts of a chain stored before transcripts were kept are transcribed anew."""
    stored = [item for item in history if untranscribed([item])] if conversation else []
    before = copy.deepcopy(stored)
    keep_transcripts(untranscribed(history + items), texts)
    changes = [(old, new) for old, new in zip(before, stored, strict=True) if old != new]
    if changes:
        with contextlib.suppress(APIError):  # logged by store_call
            await store_call(request, "update_items", owner, conversation, changes)


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


async def _events(
    builder: ResponseBuilder, frames: AsyncIterator[Frame], save: Any, rid: str
) -> AsyncIterator[bytes]:
    """The SSE stream of one response; it is stored before its last event goes out."""
    try:
        for event in builder.start():
            yield named_event(event)
        end: list[dict[str, Any]] = []
        async for events, last in response_events(builder, frames, rid):
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
            task = detached(save())  # Serve cancels the calls of the cancelled request
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
        replay(request, owner, response_id, after),
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
async def input_items(response_id: str, request: Request, key: Key, query: Listing) -> JSONResponse:
    """A response's own input items (not those of the responses it continues), as given,
    newest first unless ``order=asc`` (``ListQuery``)."""
    items = await store_call(request, "input_items", owner_of(key), response_id)
    if items is None:
        raise not_found("Response", response_id, "response_id")
    return JSONResponse(query.page(public_items(items)))
