"""``POST /v1/chat/completions`` and ``POST /v1/completions``: parse, check, route, dispatch.

The body is validated strictly (``protocol/openai.py``), then by the model's family against
what the model is configured for; ``input_audio`` parts are transcribed (for families that
want text), and the family turns the request into its deployment's body.
"""

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from serve_app.audio_parts import transcribe_parts
from serve_app.auth import APIKey, require
from serve_app.pipeline import admit, registry, run_backend
from serve_app.protocol.messages import audio_parts
from serve_app.protocol.openai import ChatCompletionRequest, CompletionRequest, GenerationRequest

router = APIRouter()


async def _generate(
    endpoint: str, body: GenerationRequest, request: Request, key: APIKey | None
) -> Response:
    body.check()
    models = registry(request)
    model = models.get(body.model, endpoint, request.url.path)
    family = model.family
    family.check(body, model.config)
    audio = family.transcribes_audio_parts and isinstance(body, ChatCompletionRequest)
    audio = audio and bool(audio_parts(body.messages))
    record = await admit(request, model, key, ("audio",) if audio else ())  # as a transcription
    rid = record.request_id
    if audio:
        await transcribe_parts(models, model, body.messages, rid, record.add_usage)
    payload = family.backend_body(body, model.config)

    # Token streams go over Serve's gRPC data plane (`_by_reference=False`): about a third less
    # CPU per streamed chunk in the model replica than Ray object refs (measured per process
    # under bench/vs_vllm.py's load).
    def call():
        return model.handle.options(stream=True, _by_reference=False).generate.remote(
            endpoint, payload, rid
        )

    return await run_backend(request, model, record, bool(body.stream), call)


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
