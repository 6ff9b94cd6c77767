"""What every model route shares: the registry, the request id, and running a backend call
behind the key's model scope, its rate limits and the configured time limits."""

import logging
from collections.abc import Callable
from typing import Any

from fastapi import Request
from fastapi.responses import Response

from serve_app.auth import APIKey, authorize_model
from serve_app.dispatch import frames_to_response
from serve_app.errors import request_id_of
from serve_app.log import LOGGER
from serve_app.ratelimit import RateLimits
from serve_app.registry import ModelRegistry, ServedModel

logger = logging.getLogger(LOGGER)


def registry(request: Request) -> ModelRegistry:
    return request.app.state.registry


def request_id(request: Request) -> str:
    return request_id_of(request)


async def admit(request: Request, model: ServedModel, key: APIKey | None, kind: str) -> None:
    """403 if the key may not use ``model``; 429 if it is over a rate limit."""
    authorize_model(key, model.id, model.config.aliases)
    limits: RateLimits = request.app.state.rate_limits
    await limits.admit(key, kind)


async def run_backend(
    request: Request,
    model: ServedModel,
    key: APIKey | None,
    kind: str,
    stream: bool,
    call: Callable[[], Any],
) -> Response:
    """Make ``call()`` (a streaming handle call) and answer with its frames.

    Usage is recorded against the key's rate limits once known. The first frame must come
    within the stream TTFT limit (streams) or the request timeout (everything else).
    """
    rid = request_id_of(request)
    limits = request.app.state.registry.config.limits
    logger.info(
        "%s model=%s key=%s [request_id=%s]",
        request.url.path,
        model.id,
        key.name if key else "-",
        rid,
    )
    return await frames_to_response(
        call,
        rid,
        timeout_s=limits.stream_ttft_timeout_s if stream else limits.request_timeout_s,
        retry_after_s=limits.retry_after_s,
        on_usage=request.app.state.rate_limits.recorder(key, kind),
    )
