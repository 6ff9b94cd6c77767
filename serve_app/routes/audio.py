"""``POST /v1/audio/transcriptions`` and ``POST /v1/audio/translations``.

The upload is read with its size limit, decoded on the audio preprocessor pool, and the
decoded audio goes from there straight to the Whisper replica (the preprocessor's
DeploymentResponse is an argument of the Whisper call), never back through the ingress.
"""

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from pydantic import ValidationError
from starlette.datastructures import UploadFile

from deployments.common.errors import describe_validation_errors
from serve_app.auth import APIKey, require
from serve_app.errors import APIError
from serve_app.pipeline import admit, registry, run_backend
from serve_app.protocol.audio import AudioParams
from serve_app.uploads import read_form, too_large

router = APIRouter()
TRANSLATION_FIELDS = ("model", "prompt", "response_format", "temperature", "stream")


async def _speech(task: str, request: Request, key: APIKey | None) -> Response:
    route = request.url.path
    models = registry(request)
    limits = models.config.audio
    form = await read_form(request, limits.max_upload_bytes)
    upload = form.get("file")
    if not isinstance(upload, UploadFile):
        raise APIError(400, "The `file` field is required and must be a file.", param="file")
    fields = {"task": task}
    for field, value in form.multi_items():
        if isinstance(value, str):
            name = field.removesuffix("[]")
            if name == "timestamp_granularities":
                fields.setdefault(name, []).append(value)
            elif task == "transcribe" or name in TRANSLATION_FIELDS:
                fields[name] = value
    try:
        params = AudioParams.model_validate(fields)
    except ValidationError as exc:
        message, param = describe_validation_errors(exc.errors(include_url=False))
        raise APIError(400, message, param=param) from None
    if params.model is not None:
        capability = "transcriptions" if task == "transcribe" else "translations"
        model = models.get(params.model, capability, route)
    elif models.default_stt is not None:
        model = models.default_stt
    else:
        raise APIError(400, "No speech-to-text model is configured.", param="model")
    record = await admit(request, model, key)
    data = await upload.read()
    if len(data) > limits.max_upload_bytes:
        raise too_large(limits.max_upload_bytes, len(data))
    payload = {**params.to_backend(), "request_id": record.request_id}
    account = request.app.state.rate_limits.account(record)

    def call():
        decoded = models.preprocessor.decode.remote(data)
        return model.handle.options(stream=True).transcribe.remote(decoded, payload, account)

    return await run_backend(
        request, model, record, params.stream, call, through=(models.preprocessor,)
    )


@router.post("/v1/audio/transcriptions")
async def transcriptions(
    request: Request, key: Annotated[APIKey | None, Depends(require("audio-transcriptions"))]
) -> Response:
    return await _speech("transcribe", request, key)


@router.post("/v1/audio/translations")
async def translations(
    request: Request, key: Annotated[APIKey | None, Depends(require("audio-translations"))]
) -> Response:
    return await _speech("translate", request, key)
