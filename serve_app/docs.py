"""What the ingress serves without a key: ``/openapi.json``, ``/docs`` and ``/playground``.

``/docs`` is Swagger UI from the ``fastapi-offline`` package (its JavaScript and CSS are
served by the ingress itself, nothing comes from a CDN). The OpenAPI document is FastAPI's,
plus what FastAPI cannot see: the Bearer key scheme, the multipart form of the audio routes
(they parse it themselves, to bound uploads) and request examples.
"""

from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.responses import FileResponse

from serve_app.protocol.audio import AudioParams

PLAYGROUND = Path(__file__).parent / "static" / "playground.html"

router = APIRouter()


@router.get("/playground", include_in_schema=False)
async def playground() -> FileResponse:
    """One static page; the calls it makes carry the key the user types (kept in memory)."""
    return FileResponse(PLAYGROUND, media_type="text/html")


EXAMPLES: dict[str, dict[str, Any]] = {
    "/v1/chat/completions": {
        "model": "smollm2-135m-instruct",
        "messages": [{"role": "user", "content": "Say hello in French."}],
        "max_tokens": 32,
        "stream": False,
    },
    "/v1/completions": {
        "model": "smollm2-135m-instruct",
        "prompt": "Once upon a time",
        "max_tokens": 16,
    },
    "/v1/embeddings": {
        "model": "all-minilm-l6-v2",
        "input": ["The cat sat on the mat.", "A kitten rests on a rug."],
    },
    "/v1/responses": {
        "model": "smollm2-135m-instruct",
        "instructions": "Answer in one sentence.",
        "input": "Say hello in French.",
        "max_output_tokens": 32,
    },
    "/v1/conversations": {
        "items": [{"role": "user", "content": "My name is Ada."}],
        "metadata": {"topic": "demo"},
    },
}

AUDIO_FIELDS = ("model", "language", "prompt", "response_format", "temperature", "stream")


def _audio_form(path: str) -> dict[str, Any]:
    params = AudioParams.model_json_schema()["properties"]
    properties: dict[str, Any] = {
        "file": {
            "type": "string",
            "format": "binary",
            "description": "The audio file (any format).",
        }
    }
    fields = (
        AUDIO_FIELDS if path.endswith("transcriptions") else AUDIO_FIELDS[:1] + AUDIO_FIELDS[2:]
    )
    for name in fields:
        properties[name] = {k: v for k, v in params[name].items() if k != "title"}
    if path.endswith("transcriptions"):
        properties["timestamp_granularities[]"] = {
            "type": "array",
            "items": {"type": "string", "enum": ["segment", "word"]},
        }
    return {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {"type": "object", "required": ["file"], "properties": properties}
            }
        },
    }


def install_openapi(app: FastAPI) -> None:
    """Make ``app.openapi()`` return our document (built once)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title, version=app.version, summary=app.summary, routes=app.routes
            )
            schema.setdefault("components", {})["securitySchemes"] = {
                "apiKey": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "An API key from the keys file (`Authorization: Bearer <key>`).",
                }
            }
            for path, operations in schema["paths"].items():
                if not path.startswith("/v1/"):
                    continue
                for operation in operations.values():
                    operation["security"] = [{"apiKey": []}]
                    if path.startswith("/v1/audio/"):
                        operation["requestBody"] = _audio_form(path)
                    elif path in EXAMPLES:
                        content = operation["requestBody"]["content"]["application/json"]
                        content["example"] = EXAMPLES[path]
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
