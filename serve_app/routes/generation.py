"""``POST /v1/chat/completions`` and ``POST /v1/completions``: parse, route, dispatch."""

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from serve_app.auth import APIKey, require
from serve_app.protocol.openai import ChatCompletionRequest, CompletionRequest, GenerationRequest
from serve_app.registry import ModelRegistry
from serve_app.routes.deps import admit, registry, request_id, run_backend

router = APIRouter()

Registry = Annotated[ModelRegistry, Depends(registry)]


async def _generate(
    endpoint: str, body: GenerationRequest, request: Request, key: APIKey | None
) -> Response:
    models = registry(request)
    model = models.get(body.model, "llm", request.url.path)
    await admit(request, model, key, "tokens")
    rid = request_id(request)
    payload = body.to_backend()

    def call():
        return model.handle.options(stream=True).generate.remote(endpoint, payload, rid)

    return await run_backend(request, model, key, "tokens", bool(body.stream), call)


@router.post("/v1/chat/completions")
async def chat_completions(
    body: ChatCompletionRequest,
    request: Request,
    key: Annotated[APIKey | None, Depends(require("chat-completions"))],
) -> Response:
    return await _generate("chat", body, request, key)


@router.post("/v1/completions")
async def completions(
    body: CompletionRequest,
    request: Request,
    key: Annotated[APIKey | None, Depends(require("completions"))],
) -> Response:
    return await _generate("completions", body, request, key)
