"""The Responses API: ``/v1/responses`` and the stored responses under it.

``POST /v1/responses`` expands the stored history (the ``previous_response_id`` chain) and
this request's input into one chat request, runs it through the chat pipeline (the same
checks, admission, audio parts, limits and metrics as ``/v1/chat/completions``, on any
chat-capable model) as a stream, and turns its chunks into a Response (``serve_app/bridge.py``).
A stored response (``store`` defaults to true) is committed before the client sees its end:
``response.completed`` (or ``incomplete``/``failed``) in a stream, the body otherwise. Every
stored response belongs to the API key that made it: any other key gets 404.
"""

import asyncio
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
from serve_app.pipeline import registry
from serve_app.protocol.openai import ChatCompletionRequest
from serve_app.protocol.responses import ResponseRequest, new_id, response_param
from serve_app.routes.generation import generate_call, prepare
from serve_app.routes.stored import Order, not_found, owner_of, page, store_call
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
        model, record, payload = await prepare("chat", chat, request, key)
    except APIError as exc:
        exc.frame.param = response_param(exc.frame.param)
        raise
    payload["stream"] = True
    payload["stream_options"] = {"include_usage": True}
    record.stream = bool(body.stream)
    rid = record.request_id
    builder = ResponseBuilder(base_response(new_id("resp"), body, model.id, int(time.time())))
    limits = registry(request).config.limits
    try:
        stream, first = await open_call(
            generate_call(model, "chat", payload, rid),
            rid,
            timeout_s=limits.stream_ttft_timeout_s if body.stream else limits.request_timeout_s,
            retry_after_s=limits.retry_after_s,
            needs=(model.handle,),
        )
    except APIError as exc:
        exc.frame.param = response_param(exc.frame.param)
        return error_response(exc.frame, exc.headers)
    if isinstance(first, ErrorFrame):  # refused before any output: nothing to store
        cancel_call(stream)
        first.param = response_param(first.param)
        return error_response(first)
    frames = _frames(first, rest_frames(stream, record.add_usage, record.failed))
    stored = body.store is not False

    async def save() -> None:
        """Store the response, and add its input and output to its conversation."""
        if stored:
            await store_call(request, "put_response", owner, builder.response, items)
        conversation = body.conversation_id
        if conversation and builder.response["status"] in ("completed", "incomplete"):
            new = items + builder.response["output"]
            if not await store_call(request, "add_items", owner, conversation, new):
                raise not_found("Conversation", conversation, "conversation")

    if body.stream:
        return StreamingResponse(
            _events(builder, frames, save, rid),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
    async for frame in frames:
        if isinstance(frame, ChunkFrame):
            builder.feed(json.loads(frame.data))
        elif isinstance(frame, ErrorFrame):
            builder.fail(frame)
            break
    if not builder.ended:
        builder.finish()
    await save()
    return JSONResponse(builder.response)


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


def _sse(event: dict[str, Any]) -> bytes:
    data = json.dumps(event, separators=(",", ":"))
    return f"event: {event['type']}\ndata: {data}\n\n".encode()


async def _events(
    builder: ResponseBuilder, frames: AsyncIterator[Frame], save: Any, rid: str
) -> AsyncIterator[bytes]:
    """The SSE stream of one response; it is stored before its last event goes out."""
    try:
        for event in builder.start():
            yield _sse(event)
        end: list[dict[str, Any]] | None = None
        try:
            async for frame in frames:
                if isinstance(frame, ChunkFrame):
                    for event in builder.feed(json.loads(frame.data)):
                        yield _sse(event)
                elif isinstance(frame, ErrorFrame):
                    end = builder.fail(frame)
                    break
        except Exception:
            logger.exception("stream failed mid-way [request_id=%s]", rid)
            message = f"The model backend failed mid-stream (request id: {rid})."
            end = builder.fail(ErrorFrame(500, message))
        if end is None:
            end = builder.finish()
        try:
            await save()
        except APIError as exc:
            error = exc.frame
            yield _sse(
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
            yield _sse(event)
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
    include: Annotated[list[str] | None, Query()] = None,
    stream: bool | None = None,
) -> JSONResponse:
    if stream:
        raise APIError(400, "Only background responses can be streamed again.", param="stream")
    found = await store_call(request, "get_response", owner_of(key), response_id)
    if found is None:
        raise not_found("Response", response_id, "response_id")
    return JSONResponse(found)


@router.delete("/v1/responses/{response_id}")
async def delete_response(response_id: str, request: Request, key: Key) -> JSONResponse:
    if not await store_call(request, "delete_response", owner_of(key), response_id):
        raise not_found("Response", response_id, "response_id")
    return JSONResponse({"id": response_id, "object": "response.deleted", "deleted": True})


@router.post("/v1/responses/{response_id}/cancel")
async def cancel_response(response_id: str, request: Request, key: Key) -> JSONResponse:
    found = await store_call(request, "get_response", owner_of(key), response_id)
    if found is None:
        raise not_found("Response", response_id, "response_id")
    raise APIError(400, "Only background responses can be cancelled.", param="response_id")


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
