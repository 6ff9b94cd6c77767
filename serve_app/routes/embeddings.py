"""``POST /v1/embeddings``: parse strictly, pick a model that serves embeddings, dispatch.

The model's deployment (a vLLM pooling replica, or an upstream provider) answers with the
whole body; its ``usage.prompt_tokens`` is charged to the key's token budget."""

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from serve_app.auth import APIKey, require
from serve_app.pipeline import admit, registry, run_backend
from serve_app.protocol.embeddings import EmbeddingRequest
from serve_app.routes.generation import generate_call

router = APIRouter()


@router.post("/v1/embeddings")
async def embeddings(
    body: EmbeddingRequest,
    request: Request,
    key: Annotated[APIKey | None, Depends(require("embeddings"))],
) -> Response:
    body.check()
    model = registry(request).get(body.model, "embeddings", request.url.path)
    record = await admit(request, model, key)
    payload = model.family.backend_body(body, model.config)
    call = generate_call(model, "embeddings", payload, record.request_id)
    return await run_backend(request, model, record, False, call)
