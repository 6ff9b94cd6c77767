"""``GET /v1/models`` and ``GET /v1/models/{id}``."""

from typing import Annotated, Any

from fastapi import APIRouter, Depends

from serve_app.registry import ModelRegistry
from serve_app.routes.deps import registry

router = APIRouter()

Registry = Annotated[ModelRegistry, Depends(registry)]


@router.get("/v1/models")
async def list_models(models: Registry) -> dict[str, Any]:
    return {"object": "list", "data": models.cards()}


@router.get("/v1/models/{model_id:path}")
async def retrieve_model(model_id: str, models: Registry) -> dict[str, Any]:
    return models.lookup(model_id).card(models.created)
