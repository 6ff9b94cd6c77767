"""The one helper that turns a backend call (value, stream or error) into an HTTP response."""

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from ray.serve.exceptions import BackPressureError

from deployments.common.contracts import (
    ChunkFrame,
    ErrorFrame,
    Frame,
    JSONFrame,
    TextFrame,
    Usage,
    UsageFrame,
)
from serve_app.errors import APIError, error_response, server_error
from serve_app.log import LOGGER
from serve_app.sse import sse_stream

logger = logging.getLogger(LOGGER)

UsageCallback = Callable[[Usage], None] | None
ErrorCallback = Callable[[ErrorFrame], None] | None


def _cancel(stream: Any) -> None:
    """Cancel a handle call; a call that already failed re-raises its error here: drop it."""
    if stream is not None:
        with contextlib.suppress(Exception):
            stream.cancel()


async def _rest(
    stream: Any, on_usage: UsageCallback, on_error: ErrorCallback
) -> AsyncIterator[Frame]:
    """The rest of a backend stream, usage taken out; cancel the call if we stop early."""
    try:
        async for frame in stream:
            if isinstance(frame, UsageFrame):
                if on_usage:
                    on_usage(frame.usage)
                continue
            if isinstance(frame, ErrorFrame) and on_error:
                on_error(frame)
            yield frame
    except Exception:
        if on_error:
            on_error(ErrorFrame(500, "The model backend failed mid-stream."))
        raise
    finally:
        _cancel(stream)


async def open_call(
    call: Callable[[], Any], request_id: str, timeout_s: float, retry_after_s: int
) -> tuple[Any, Frame]:
    """Make a streaming handle call and await its first frame: ``(stream, first)``.

    No first frame within ``timeout_s``: the call is cancelled (aborting the engine work) and
    ``APIError`` 504 is raised. A full deployment queue is 503 with ``Retry-After``; any other
    failure of the call (a dead replica, say) is 503 naming only the request id.
    """
    stream = None
    try:
        stream = call()  # a full queue can raise here already
        return stream, await asyncio.wait_for(stream.__anext__(), timeout_s)
    except StopAsyncIteration:
        logger.error("backend returned no frame [request_id=%s]", request_id)
        raise APIError(500, _with_id("The server had an error.", request_id)) from None
    except TimeoutError:
        _cancel(stream)  # aborts the engine work
        logger.warning("backend timed out after %ss [request_id=%s]", timeout_s, request_id)
        message = f"The model did not answer within {timeout_s:g} seconds"
        raise APIError(504, _with_id(message, request_id), code="timeout") from None
    except BackPressureError:  # the call never reached a replica: nothing to cancel
        logger.warning("backend queue full [request_id=%s]", request_id)
        raise APIError(
            503,
            "The model is overloaded: too many requests are queued. Please retry.",
            code="overloaded",
            headers={"Retry-After": str(retry_after_s)},
        ) from None
    except Exception:
        _cancel(stream)
        logger.exception("backend call failed [request_id=%s]", request_id)
        raise APIError(503, _with_id("The model backend is unavailable.", request_id)) from None


def _with_id(message: str, request_id: str) -> str:
    return f"{message.rstrip('.')} (request id: {request_id})."


async def first_frame(
    call: Callable[[], Any], request_id: str, timeout_s: float, retry_after_s: int
) -> Frame:
    """The first frame of a call whose answer is one frame (the call is then closed)."""
    stream, first = await open_call(call, request_id, timeout_s, retry_after_s)
    _cancel(stream)
    return first


async def frames_to_response(
    call: Callable[[], Any],
    request_id: str,
    *,
    timeout_s: float,
    retry_after_s: int,
    on_usage: UsageCallback = None,
    on_error: ErrorCallback = None,
) -> Response:
    """Make a streaming handle call and answer with its frames (see ``open_call``).

    Errors the backend reports become envelopes with their status; a JSON or text frame is
    the whole body; a chunk starts an SSE stream of the rest. ``on_usage`` gets what the
    request cost; ``on_error`` an error that arrives inside a stream.
    """
    try:
        stream, first = await open_call(call, request_id, timeout_s, retry_after_s)
    except APIError as exc:
        return error_response(exc.frame, exc.headers)
    if isinstance(first, ErrorFrame):
        _cancel(stream)
        return error_response(first)
    if isinstance(first, JSONFrame | TextFrame):
        _cancel(stream)
        if on_usage:
            on_usage(first.usage)
        if isinstance(first, JSONFrame):
            return JSONResponse(first.body)
        return PlainTextResponse(first.text, media_type=first.media_type)
    if isinstance(first, ChunkFrame):
        return StreamingResponse(
            sse_stream(first, _rest(stream, on_usage, on_error), request_id),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
    logger.error("unexpected frame %r [request_id=%s]", type(first), request_id)
    _cancel(stream)
    return server_error(request_id)
