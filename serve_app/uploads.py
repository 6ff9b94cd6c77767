"""Multipart uploads with the size limit enforced while the body is read."""

from collections.abc import AsyncIterator

from fastapi import Request
from starlette.datastructures import FormData
from starlette.formparsers import MultiPartException, MultiPartParser

from serve_app.errors import APIError

# Room for the form's other fields and boundaries on top of the file itself.
FORM_OVERHEAD_BYTES = 64 * 1024


def too_large(limit: int, seen: int) -> APIError:
    return APIError(
        413,
        f"Maximum content size limit ({limit}) exceeded ({seen} bytes read).",
        param="file",
        code="file_too_large",
    )


async def _bounded(stream: AsyncIterator[bytes], limit: int) -> AsyncIterator[bytes]:
    seen = 0
    async for chunk in stream:
        seen += len(chunk)
        if seen > limit:
            raise too_large(limit - FORM_OVERHEAD_BYTES, seen)
        yield chunk


async def read_form(request: Request, max_file_bytes: int) -> FormData:
    """Parse a multipart/form-data body, refusing (413) to read past the limit."""
    content_type = request.headers.get("content-type", "")
    if not content_type.lower().startswith("multipart/form-data"):
        raise APIError(
            400, "The request body must be multipart/form-data with a `file` part.", param="file"
        )
    limit = max_file_bytes + FORM_OVERHEAD_BYTES
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise APIError(400, "Invalid Content-Length header.")
        if int(declared) > limit:
            raise too_large(max_file_bytes, int(declared))
    parser = MultiPartParser(
        request.headers,
        _bounded(request.stream(), limit),
        max_files=1,
        max_fields=16,
        max_part_size=64 * 1024,
    )
    try:
        return await parser.parse()
    except MultiPartException as exc:
        raise APIError(400, f"Could not parse the multipart form: {exc.message}") from exc
