"""``POST /v1/chat/completions`` and ``POST /v1/completions``: parse, check, route, dispatch.

The body is validated strictly (``protocol/openai.py``), then by the model's family against
what the model is configured for; ``input_audio`` parts are transcribed (for families that
want text), and the family turns the request into its deployment's body.
"""

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from deployments.common.usage import Account
from serve_app.audio_parts import transcribe_parts
from serve_app.auth import APIKey, require
from serve_app.channels import CHANNELS
from serve_app.pipeline import Finished, admit, registry, run_backend
from serve_app.protocol.messages import audio_parts
from serve_app.protocol.openai import ChatCompletionRequest, CompletionRequest, GenerationRequest
from serve_app.registry import ServedModel

router = APIRouter()


async def prepare(
    endpoint: str, body: GenerationRequest, request: Request, key: APIKey | None
) -> tuple[ServedModel, Finished, dict[str, Any]]:
    """Check ``body``, admit it and transcribe its ``input_audio`` parts: the model, the
    request's record and the body its deployment runs."""
    body.check()
    models = registry(request)
    model = models.get(body.model, endpoint, request.url.path)
    family = model.family
    family.check(body, model.config)
    audio = family.transcribes_audio_parts and isinstance(body, ChatCompletionRequest)
    audio = audio and bool(audio_parts(body.messages))
    record = await admit(request, model, key, ("audio",) if audio else ())  # as a transcription
    if audio:
        await transcribe_parts(models, model, body.messages, record.request_id, record.add_usage)
    return model, record, family.backend_body(body, model.config)


def generate_call(
    model: ServedModel,
    endpoint: str,
    payload: dict[str, Any],
    rid: str,
    account: Account | None = None,
):
    """The streaming handle call that runs ``payload`` on the model's deployment.

    Calls go over Serve's gRPC data plane (``_by_reference=False``): about a third less CPU
    per message in the model replica than Ray object refs (measured per process under
    bench/vs_vllm.py's load). A family with per-step channels gets its streams' chunks on
    them (``serve_app/channels.py``); one that meters aborts gets the ``account`` its
    replica charges work cut short to (``deployments/common/usage.py``)."""
    generate = model.handle.options(stream=True, _by_reference=False).generate
    extra = {"account": account} if model.family.meters_aborts and account else {}
    if not model.family.channel:
        return lambda: generate.remote(endpoint, payload, rid, **extra)
    return lambda: CHANNELS.call(
        model.handle,
        lambda caller: generate.remote(endpoint, payload, rid, caller=caller, **extra),
        rid,
    )


async def _generate(
    endpoint: str, body: GenerationRequest, request: Request, key: APIKey | None
) -> Response:
    model, record, payload = await prepare(endpoint, body, request, key)
    account = request.app.state.rate_limits.account(record)
    call = generate_call(model, endpoint, payload, record.request_id, account)
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
