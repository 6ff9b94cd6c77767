"""``POST /v1/chat/completions`` and ``POST /v1/completions``: parse, route, dispatch."""

from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi.responses import Response

from serve_app.dispatch import frames_to_response
from serve_app.protocol.openai import ChatCompletionRequest, CompletionRequest, GenerationRequest
from serve_app.registry import ModelRegistry
from serve_app.routes.deps import registry, request_id

router = APIRouter()

Registry = Annotated[ModelRegistry, Depends(registry)]
RequestId = Annotated[str, Depends(request_id)]


async def _generate(
    endpoint: str, body: GenerationRequest, models: ModelRegistry, rid: str
) -> Response:
    route = "/v1/chat/completions" if endpoint == "chat" else "/v1/completions"
    model = models.get(body.model, "llm", route)
    call = model.handle.options(stream=True).generate.remote(endpoint, body.to_backend(), rid)
    return await frames_to_response(call, rid)


@router.post("/v1/chat/completions")
async def chat_completions(
    body: ChatCompletionRequest, models: Registry, rid: RequestId
) -> Response:
    return await _generate("chat", body, models, rid)


@router.post("/v1/completions")
async def completions(body: CompletionRequest, models: Registry, rid: RequestId) -> Response:
    return await _generate("completions", body, models, rid)
