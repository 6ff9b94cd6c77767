"""The one helper that turns a backend call (value, stream or error) into an HTTP response."""

import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse

from deployments.common.contracts import ChunkFrame, ErrorFrame, Frame, JSONFrame, TextFrame
from serve_app.errors import error_response, server_error
from serve_app.sse import sse_stream

logger = logging.getLogger("serve_app")


async def _rest(stream: Any) -> AsyncIterator[Frame]:
    """Iterate the rest of a backend stream; cancel the backend call if we stop early."""
    try:
        async for frame in stream:
            yield frame
    finally:
        stream.cancel()


async def frames_to_response(stream: Any, request_id: str) -> Response:
    """Await the first frame of a streaming handle call and answer accordingly.

    ``stream`` is a ``DeploymentResponseGenerator`` of ``Frame``s. Errors the backend reports
    become envelopes with their status; failures of the call itself (a dead replica, say)
    become a 503 envelope naming only the request id.
    """
    try:
        first = await stream.__anext__()
    except StopAsyncIteration:
        logger.error("backend returned no frame [request_id=%s]", request_id)
        return server_error(request_id)
    except Exception:
        stream.cancel()
        logger.exception("backend call failed [request_id=%s]", request_id)
        return server_error(request_id, 503, "The model backend is unavailable.")
    if isinstance(first, ErrorFrame):
        stream.cancel()
        return error_response(first)
    if isinstance(first, JSONFrame):
        stream.cancel()
        return JSONResponse(first.body)
    if isinstance(first, TextFrame):
        stream.cancel()
        return PlainTextResponse(first.text, media_type=first.media_type)
    if isinstance(first, ChunkFrame):
        return StreamingResponse(
            sse_stream(first, _rest(stream), request_id),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
    logger.error("unexpected frame %r [request_id=%s]", type(first), request_id)
    stream.cancel()
    return server_error(request_id)
