"""``POST /v1/chat/completions`` and ``POST /v1/completions``: parse, check, route, dispatch.

The body is validated strictly (``protocol/openai.py``), then against what the chosen model
can do (reasoning, tools), ``input_audio`` parts are transcribed, and the model's
``sampling_defaults`` fill the samplers the request left unset.
"""

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from serve_app.audio_parts import transcribe_parts
from serve_app.auth import APIKey, require
from serve_app.errors import APIError
from serve_app.protocol.openai import ChatCompletionRequest, CompletionRequest, GenerationRequest
from serve_app.registry import ServedModel
from serve_app.routes.deps import admit, registry, request_id, run_backend

router = APIRouter()


def check_capabilities(body: GenerationRequest, model: ServedModel) -> None:
    """400 when the request asks for what this model is not configured to do."""
    if not isinstance(body, ChatCompletionRequest):
        return
    engine = model.config.engine
    if body.thinking() and not engine.reasoning_parser:
        param = "enable_thinking" if body.enable_thinking is not None else "reasoning_effort"
        raise APIError(
            400,
            f"The model '{body.model}' does not support reasoning (no reasoning parser is "
            "configured for it).",
            param=param,
        )
    if body.uses_tools():
        if not engine.tool_call_parser:
            raise APIError(
                400,
                f"The model '{body.model}' does not support tool calls (no tool parser is "
                "configured for it).",
                param="tools",
            )
        if body.tool_choice in (None, "auto") and not engine.enable_auto_tool_choice:
            raise APIError(
                400,
                f"The model '{body.model}' does not support tool_choice 'auto'; use "
                "'required' or name a function.",
                param="tool_choice",
            )


async def _generate(
    endpoint: str, body: GenerationRequest, request: Request, key: APIKey | None
) -> Response:
    body.check()
    models = registry(request)
    model = models.get(body.model, "llm", request.url.path)
    check_capabilities(body, model)
    await admit(request, model, key, "tokens")
    rid = request_id(request)
    if isinstance(body, ChatCompletionRequest):
        on_audio = request.app.state.rate_limits.recorder(key, "audio")
        await transcribe_parts(models, model, body.messages, rid, on_audio)
    payload = body.to_backend(model.config.sampling_defaults)

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
