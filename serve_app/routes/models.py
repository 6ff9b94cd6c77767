"""``GET /v1/models`` and ``GET /v1/models/{id}`` (only the models the key may use)."""

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request

from serve_app.auth import APIKey, authorize_model, require
from serve_app.pipeline import registry

router = APIRouter()

Key = Annotated[APIKey | None, Depends(require("models"))]


@router.get("/v1/models")
async def list_models(request: Request, key: Key) -> dict[str, Any]:
    await request.app.state.rate_limits.admit(key)
    models = registry(request)
    allowed = [
        m.card(models.created)
        for m in models.listed()
        if key is None or key.allows_model(m.id, m.aliases)
    ]
    return {"object": "list", "data": allowed}


@router.get("/v1/models/{model_id:path}")
async def retrieve_model(request: Request, model_id: str, key: Key) -> dict[str, Any]:
    await request.app.state.rate_limits.admit(key)
    models = registry(request)
    model = models.lookup(model_id)
    authorize_model(key, model.id, model.aliases)
    return model.card(models.created)
