"""The only place that frames Server-Sent Events."""

import json
import logging
from collections.abc import AsyncIterator

from deployments.common.contracts import ChunkFrame, ErrorFrame, Frame
from serve_app.log import LOGGER

logger = logging.getLogger(LOGGER)

DONE = b"data: [DONE]\n\n"


def event(data: str) -> bytes:
    """One ``data:`` event; ``data`` is JSON text (it never contains a raw newline)."""
    return b"data: " + data.encode() + b"\n\n"


def named_event(event: dict) -> bytes:
    """An event with its ``type`` as the SSE event name (the Responses API's framing)."""
    data = json.dumps(event, separators=(",", ":"))
    return f"event: {event['type']}\ndata: {data}\n\n".encode()


def error_event(frame: ErrorFrame) -> bytes:
    return event(json.dumps(frame.envelope(), separators=(",", ":")))


async def sse_stream(
    first: ChunkFrame, rest: AsyncIterator[Frame], request_id: str
) -> AsyncIterator[bytes]:
    """Frame a backend stream: its chunks, an error event if it fails, then ``[DONE]``."""
    yield event(first.data)
    try:
        async for frame in rest:
            if isinstance(frame, ChunkFrame):
                yield event(frame.data)
            elif isinstance(frame, ErrorFrame):
                yield error_event(frame)
                break
    except Exception:
        logger.exception("stream failed mid-way [request_id=%s]", request_id)
        message = f"The model backend failed mid-stream (request id: {request_id})."
        yield error_event(ErrorFrame(500, message))
    yield DONE
