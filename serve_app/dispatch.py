"""The one helper that turns a backend call (value, stream or error) into an HTTP response."""

import asyncio
import contextlib
import logging
import math
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from ray import serve
from ray.exceptions import RayActorError
from ray.serve.exceptions import BackPressureError

from deployments.common.contracts import (
    ChunkFrame,
    ErrorFrame,
    Frame,
    JSONFrame,
    TextFrame,
    UsageFrame,
)
from serve_app.channels import ChannelLost
from serve_app.errors import APIError, error_response, server_error
from serve_app.log import LOGGER
from serve_app.sse import sse_stream

logger = logging.getLogger(LOGGER)

UsageCallback = Callable[..., None] | None  # (usage, estimated=False, lost=False)
ErrorCallback = Callable[[ErrorFrame], None] | None

# How a stream ends when its replica died (it could not charge what it did; the ingress
# charges an estimate).
REPLICA_LOST = (RayActorError, ChannelLost)

# A call still waiting for a replica is checked this often: if a deployment it needs has no
# running replica (its node is gone, or it is restarting), the client gets 503 at once
# instead of waiting out the request timeout in Serve's queue.
PROBE_S = 2.0


def _running_replicas() -> dict[tuple[str, str], int]:
    """RUNNING replicas per (application, deployment), from Serve's controller."""
    return {
        (app_name, name): deployment.replica_states.get("RUNNING", 0)
        for app_name, app in serve.status().applications.items()
        for name, deployment in app.deployments.items()
    }


class Replicas:
    """Running replica counts from Serve's controller, fetched (in a thread: the call blocks)
    at most once per ``max_age_s`` and shared by every call of this process that waits."""

    def __init__(
        self,
        fetch: Callable[[], dict[tuple[str, str], int]] = _running_replicas,
        max_age_s: float = PROBE_S,
    ) -> None:
        self.fetch = fetch
        self.max_age_s = max_age_s
        self._counts: dict[tuple[str, str], int] = {}
        self._at = -math.inf
        self._pending: asyncio.Future | None = None

    async def missing(self, handles: Sequence[Any]) -> str | None:
        """The name of the first deployment of ``handles`` with no running replica, if any."""
        now = asyncio.get_running_loop().time()
        if now - self._at > self.max_age_s:
            if self._pending is None or self._pending.done():
                self._pending = asyncio.ensure_future(asyncio.to_thread(self.fetch))
            try:
                self._counts = await asyncio.shield(self._pending)
            except Exception:
                logger.exception("could not read replica states from Serve's controller")
                return None  # unknown: keep waiting
            self._at = now
        for handle in handles:
            key = (handle.app_name, handle.deployment_name)
            if self._counts.get(key, 1) == 0:
                return handle.deployment_name
        return None


REPLICAS = Replicas()


def _assigned(stream: Any) -> bool:
    """Whether Serve has given the call to a replica (then it fails by itself if the replica
    dies). Private to Serve: a Ray upgrade that renames it fails the cluster's node-loss test
    (tests/cluster), whose new transcription must then be refused within 15 s."""
    future = getattr(stream, "_replica_result_future", None)
    return future is None or future.done()


def cancel_call(stream: Any) -> None:
    """Cancel a handle call; a call that already failed re-raises its error here: drop it."""
    if stream is not None:
        with contextlib.suppress(Exception):
            stream.cancel()


async def rest_frames(
    stream: Any, on_usage: UsageCallback, on_error: ErrorCallback, first: Frame | None = None
) -> AsyncIterator[Frame]:
    """The rest of a backend stream, usage taken out; cancel the call if we stop early.

    A stream whose replica dies before its usage frame is charged an estimate (``on_usage``
    with ``estimated=True, lost=True``): the prompt as its ``first`` chunk counted it, and a
    token per chunk relayed.
    """
    chunks = 1
    try:
        async for frame in stream:
            if isinstance(frame, UsageFrame):
                if on_usage:
                    on_usage(frame.usage, estimated=frame.estimated)
                continue
            if isinstance(frame, ErrorFrame) and on_error:
                on_error(frame)
            chunks += 1
            yield frame
    except Exception as exc:
        if on_error:
            on_error(ErrorFrame(500, "The model backend failed mid-stream."))
        prompt = first.prompt_tokens if isinstance(first, ChunkFrame) else 0
        if on_usage and prompt and isinstance(exc, REPLICA_LOST):
            usage = {"prompt_tokens": prompt, "completion_tokens": chunks}
            on_usage(usage, estimated=True, lost=True)
        raise
    finally:
        cancel_call(stream)


async def open_call(
    call: Callable[[], Any],
    request_id: str,
    timeout_s: float,
    retry_after_s: int,
    needs: Sequence[Any] = (),
) -> tuple[Any, Frame]:
    """Make a streaming handle call and await its first frame: ``(stream, first)``.

    No first frame within ``timeout_s``: the call is cancelled (aborting the engine work) and
    ``APIError`` 504 is raised. A full deployment queue is 503 with ``Retry-After``, and so is
    a call still waiting for a replica while a deployment it ``needs`` (handles) has none
    running; any other failure of the call (a dead replica, say) is 503 naming only the
    request id.
    """
    stream = first = None
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    try:
        stream = call()  # a full queue can raise here already
        first = asyncio.ensure_future(stream.__anext__())
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError
            wait = min(PROBE_S, remaining) if needs else remaining
            done, _ = await asyncio.wait({first}, timeout=wait)
            if done:
                return stream, first.result()
            if needs and not _assigned(stream) and (gone := await REPLICAS.missing(needs)):
                cancel_call(stream)
                logger.warning("%s has no running replica [request_id=%s]", gone, request_id)
                raise APIError(
                    503,
                    _with_id(
                        f"The model backend is unavailable: {gone} has no running "
                        "replica. Please retry",
                        request_id,
                    ),
                    code="unavailable",
                    headers={"Retry-After": str(retry_after_s)},
                )
    except StopAsyncIteration:
        logger.error("backend returned no frame [request_id=%s]", request_id)
        raise APIError(500, _with_id("The server had an error.", request_id)) from None
    except TimeoutError:
        cancel_call(stream)  # aborts the engine work
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
    except APIError:
        raise
    except Exception:
        cancel_call(stream)
        logger.exception("backend call failed [request_id=%s]", request_id)
        raise APIError(503, _with_id("The model backend is unavailable.", request_id)) from None
    finally:
        if first is not None:
            first.cancel()  # a no-op once done
            first.add_done_callback(_consume)


def _consume(task: asyncio.Future) -> None:
    """Retrieve a dropped first-frame task's error (a cancelled call's), so asyncio does not
    log it as never retrieved."""
    if not task.cancelled():
        task.exception()


def _with_id(message: str, request_id: str) -> str:
    return f"{message.rstrip('.')} (request id: {request_id})."


async def first_frame(
    call: Callable[[], Any],
    request_id: str,
    timeout_s: float,
    retry_after_s: int,
    needs: Sequence[Any] = (),
) -> Frame:
    """The first frame of a call whose answer is one frame (the call is then closed)."""
    stream, first = await open_call(call, request_id, timeout_s, retry_after_s, needs)
    cancel_call(stream)
    return first


async def frames_to_response(
    call: Callable[[], Any],
    request_id: str,
    *,
    timeout_s: float,
    retry_after_s: int,
    needs: Sequence[Any] = (),
    on_usage: UsageCallback = None,
    on_error: ErrorCallback = None,
) -> Response:
    """Make a streaming handle call and answer with its frames (see ``open_call``).

    ``needs`` are the handles of the deployments the call goes through (see ``open_call``).
    Errors the backend reports become envelopes with their status; a JSON or text frame is
    the whole body; a chunk starts an SSE stream of the rest. ``on_usage`` gets what the
    request cost; ``on_error`` an error that arrives inside a stream.
    """
    try:
        stream, first = await open_call(call, request_id, timeout_s, retry_after_s, needs)
    except APIError as exc:
        return error_response(exc.frame, exc.headers)
    if isinstance(first, ErrorFrame):
        cancel_call(stream)
        return error_response(first)
    if isinstance(first, JSONFrame | TextFrame):
        cancel_call(stream)
        if on_usage:
            on_usage(first.usage, estimated=getattr(first, "estimated", False))
        if isinstance(first, JSONFrame):
            return JSONResponse(first.body)
        return PlainTextResponse(first.text, media_type=first.media_type)
    if isinstance(first, ChunkFrame):
        return StreamingResponse(
            sse_stream(first, rest_frames(stream, on_usage, on_error, first), request_id),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
    logger.error("unexpected frame %r [request_id=%s]", type(first), request_id)
    cancel_call(stream)
    return server_error(request_id)
