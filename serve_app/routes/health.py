"""``GET /health`` (no auth): per-model readiness, 200 when all are ready, else 503."""

import asyncio
import logging

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from serve_app.log import LOGGER
from serve_app.pipeline import registry
from serve_app.registry import ServedModel

logger = logging.getLogger(LOGGER)
router = APIRouter()


async def _ready(model: ServedModel, timeout_s: float) -> bool:
    try:
        await asyncio.wait_for(model.handle.ready.remote(), timeout_s)
    except Exception as exc:  # timeouts, dead replicas, engine errors: all mean "not ready"
        logger.warning("health: %s not ready: %s", model.id, type(exc).__name__)
        return False
    return True


@router.get("/health")
async def health(request: Request) -> JSONResponse:
    models = registry(request)
    timeout_s = request.app.state.settings.health_timeout_s
    states = await asyncio.gather(*(_ready(m, timeout_s) for m in models.models))
    body = {
        "status": "ok" if all(states) else "unavailable",
        "models": {
            m.id: {"type": m.type, "ready": ok} for m, ok in zip(models.models, states, strict=True)
        },
    }
    return JSONResponse(body, status_code=200 if all(states) else 503)
