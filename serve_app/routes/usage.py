"""OpenAI's Usage API over the usage ledger: ``GET /v1/organization/usage/{completions,
embeddings,audio_transcriptions}``, for keys with the ``usage`` scope (every key's usage).

Time buckets of ``bucket_width`` start at ``start_time``; every bucket up to ``end_time``
(default: now) is listed, empty ones too, ``limit`` per page; ``page`` is the opaque cursor
of ``next_page``. The ledger counts by minute, so a bucket holds the minutes that start in
it. ``api_key_id`` is the key's name; there are no projects or users here: grouping by them
gives null, filtering by them is refused.
"""

import base64
import binascii
import math
import time
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request

from serve_app.auth import APIKey, require
from serve_app.errors import APIError
from serve_app.routes.stored import store_call

router = APIRouter()

# bucket_width -> (seconds, default limit, max limit), as OpenAI's
WIDTHS = {"1m": (60, 60, 1440), "1h": (3600, 24, 168), "1d": (86400, 7, 31)}
COMMON_GROUPS = ("project_id", "user_id", "api_key_id", "model")
KINDS = {
    "completions": COMMON_GROUPS + ("batch", "service_tier"),
    "embeddings": COMMON_GROUPS,
    "audio_transcriptions": COMMON_GROUPS,
}
LISTS = ("group_by", "api_key_ids", "models", "project_ids", "user_ids")
SCALARS = ("start_time", "end_time", "bucket_width", "limit", "page", "batch")
LEDGER_COLUMNS = {"api_key_id": "api_key", "model": "model", "batch": "batch"}


def _params(request: Request, kind: str) -> dict[str, Any]:
    """The query, lists given as ``name=a&name=b`` or ``name[]=a`` (the SDK's); anything
    this endpoint does not take is a 400."""
    found: dict[str, Any] = {}
    for name, value in request.query_params.multi_items():
        base = name.removesuffix("[]")
        if base in LISTS:
            found.setdefault(base, []).append(value)
        elif name in SCALARS and (name != "batch" or kind == "completions"):
            if name in found:
                raise APIError(400, f"'{name}' is given more than once.", param=name)
            found[name] = value
        else:
            raise APIError(400, f"Unknown parameter: '{name}'.", param=name)
    return found


def _int(params: dict[str, Any], name: str, default: int | None = None) -> int:
    value = params.get(name)
    if value is None:
        if default is None:
            raise APIError(400, f"Missing required parameter: '{name}'.", param=name)
        return default
    try:
        return int(value)
    except ValueError:
        raise APIError(400, f"'{name}' must be an integer.", param=name) from None


def _page(cursor: str | None) -> int:
    """The index of the first bucket of the page ``cursor`` names (0: the first page)."""
    if cursor is None:
        return 0
    try:
        index = int(base64.urlsafe_b64decode(cursor.encode()).decode().removeprefix("bucket:"))
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise APIError(400, "'page' is not a cursor this API returned.", param="page") from None
    if index < 0:
        raise APIError(400, "'page' is not a cursor this API returned.", param="page")
    return index


def _cursor(index: int) -> str:
    return base64.urlsafe_b64encode(f"bucket:{index}".encode()).decode()


@router.get("/v1/organization/usage/{kind}")
async def usage(
    kind: str,
    request: Request,
    key: Annotated[APIKey | None, Depends(require("usage"))],
) -> dict[str, Any]:
    if kind not in KINDS:
        raise APIError(
            404,
            f"Usage of '{kind[:40]}' is not kept here; ask for {', '.join(KINDS)}.",
            code="not_found",
        )
    params = _params(request, kind)
    for name in ("project_ids", "user_ids"):
        if name in params:
            raise APIError(
                400, f"This server has no projects or users: '{name}' cannot filter.", param=name
            )
    width_name = params.get("bucket_width", "1d")
    if width_name not in WIDTHS:
        raise APIError(
            400, f"'bucket_width' must be one of {', '.join(WIDTHS)}.", param="bucket_width"
        )
    width, default_limit, max_limit = WIDTHS[width_name]
    start = _int(params, "start_time")
    end = _int(params, "end_time", math.ceil(time.time()))  # now, this second included
    if start < 0:
        raise APIError(400, "'start_time' must not be negative.", param="start_time")
    if start >= end:
        raise APIError(400, "'start_time' must be before 'end_time'.", param="start_time")
    limit = _int(params, "limit", default_limit)
    if not 1 <= limit <= max_limit:
        raise APIError(
            400,
            f"'limit' must be between 1 and {max_limit} with bucket_width {width_name}.",
            param="limit",
        )
    group_by = params.get("group_by", [])
    for group in group_by:
        if group not in KINDS[kind]:
            raise APIError(
                400,
                f"Cannot group {kind} usage by '{group[:40]}'; use {', '.join(KINDS[kind])}.",
                param="group_by",
            )
    batch = params.get("batch")
    if batch is not None and batch not in ("true", "false"):
        raise APIError(400, "'batch' must be true or false.", param="batch")
    buckets = -(-(end - start) // width)
    first = _page(params.get("page"))
    last = min(first + limit, buckets)
    if first >= buckets:
        raise APIError(400, "'page' is past the last bucket of this range.", param="page")
    page_start = start + first * width
    rows = await store_call(
        request,
        "usage_buckets",
        kind,
        page_start,
        min(start + last * width, end),
        width,
        [LEDGER_COLUMNS[g] for g in group_by if g in LEDGER_COLUMNS],
        params.get("api_key_ids", []),
        params.get("models", []),
        None if batch is None else batch == "true",
    )
    results: dict[int, list[dict[str, Any]]] = {}
    for row in rows:
        results.setdefault(row["bucket"], []).append(_result(kind, row, group_by))
    data = []
    for index in range(first, last):
        bucket = start + index * width
        data.append(
            {
                "object": "bucket",
                "start_time": bucket,
                "end_time": min(bucket + width, end),
                "results": results.get(bucket, []),
            }
        )
    more = last < buckets
    return {
        "object": "page",
        "data": data,
        "has_more": more,
        "next_page": _cursor(last) if more else None,
    }


def _result(kind: str, row: dict[str, Any], group_by: list[str]) -> dict[str, Any]:
    """One result object of ``kind`` from a ledger row (group fields null unless grouped)."""
    result: dict[str, Any] = {"object": f"organization.usage.{kind}.result"}
    if kind == "audio_transcriptions":
        result["seconds"] = round(row["audio_seconds"])
    else:
        result["input_tokens"] = row["input_tokens"]
    if kind == "completions":
        result["output_tokens"] = row["output_tokens"]
        result["input_cached_tokens"] = row["cached_tokens"]
        result["input_uncached_tokens"] = row["input_tokens"] - row["cached_tokens"]
        result["input_text_tokens"] = result["input_uncached_tokens"]
        result["output_text_tokens"] = row["output_tokens"]
        result["input_cached_text_tokens"] = row["cached_tokens"]
    result["num_model_requests"] = row["requests"]
    for group in COMMON_GROUPS:
        result[group] = None
    if "api_key_id" in group_by:
        result["api_key_id"] = row["api_key"]
    if "model" in group_by:
        result["model"] = row["model"]
    if kind == "completions":
        result["batch"] = bool(row["batch"]) if "batch" in group_by else None
        result["service_tier"] = "default" if "service_tier" in group_by else None
    return result
